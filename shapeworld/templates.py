"""Every sentence pattern shapeworld emits, in one place, so the vocabulary can be read off them.

Placeholders in braces are filled by captions.py and questions.py with attribute words (scenes.py) or with the
words listed here. Nothing in this module draws random numbers.
"""
from __future__ import annotations

import re

from shapeworld.scenes import COLORS, COUNTS, POSITIONS, SHAPES

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

# Position phrases p0..p3; p0 is the canonical one.
POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "on the left side of the image", "in the left half of the picture"),
    "right": ("on the right", "on the right side", "on the right side of the image",
              "in the right half of the picture"),
    "top": ("at the top", "at the top of the image", "near the top of the picture", "in the top half of the image"),
    "bottom": ("at the bottom", "at the bottom of the image", "near the bottom of the picture",
               "in the bottom half of the image"),
}

# Captions of a group scene. {a}: "a" or the count word; {one}: the count word; {be}: is / are; {noun}: the shape,
# plural when count > 1. The first template is the canonical caption.
CAPTION_TEMPLATES = (
    "{a} {color} {noun} {p0}",
    "there {be} {one} {color} {noun} {p1}",
    "{one} {color} {noun} {p2}",
    "the image shows {a} {color} {noun} {p0}",
    "{p1} there {be} {a} {color} {noun}",
    "{one} {noun} colored {color} {p3}",
    "an image with {a} {color} {noun} {p2}",
)

# Web noise: shop / SEO alt-text, filled from the word pools below into a fixed pool of sentences.
SPAM_TEMPLATES = (
    "buy cheap {product} online free shipping",
    "{adj} {product} for sale",
    "best {product} deals of the year",
    "click here to win a free {gift}",
    "shop {adj} {product} now and save",
    "{product} discount code",
    "order {product} today with fast delivery",
    "limited offer {adj} {product} at low prices",
    "free {gift} with every order",
    "official store for {adj} {product} and accessories",
    "compare prices on {adj} {product}",
    "{adj} {product} outlet sale up to 70 percent off",
)
SPAM_WORDS = {
    "product": ("shoes", "watches", "sunglasses", "handbags", "phone cases", "jeans", "sneakers", "laptops",
                "headphones", "furniture", "jackets", "perfume", "car insurance", "hotel rooms"),
    "adj": ("cheap", "discount", "designer", "luxury", "new", "wholesale", "vintage", "genuine"),
    "gift": ("vacation", "gift card", "smartphone", "cruise"),
}
# Camera and web file names; {nN} is N random digits, {date} a dash-separated date, {day} yyyymmdd.
FILENAME_PATTERNS = (
    "img_{n4}.jpg", "IMG_{n4}.JPG", "dsc{n5}", "DSC{n5}.JPG", "photo-{date}.png", "image{n3}.png",
    "dscn{n4}.jpg", "pxl_{day}_{n6}.jpg", "screenshot-{date}.png", "gopr{n4}.jpg", "wp_{day}_{n3}.jpg",
    "p{n7}.jpg", "{n8}.jpeg", "photo_{n4}.jpg",
)

# VQA. {noun}/{be} follow the scene's count; {shapes} is the plural; {p0} a position phrase.
VQA_TEMPLATES = {
    "color": ("what color are the shapes", "what color {be} the {noun}", "what is the color of the shapes"),
    "shape": ("what shape is in the image", "what shape are the {color} objects", "which shape is shown",
              "what kind of shape is in the picture"),
    "count": ("how many shapes are there", "how many {shapes} are in the image", "how many {color} shapes are there",
              "how many objects can you see"),
    "position": ("where are the shapes", "where {be} the {noun}", "where in the image {be} the {color} {noun}"),
}
YES_NO_TEMPLATES = {
    "exists": "is there a {color} {shape}",
    "position": "are the shapes {p0}",
    "count": "does the image show exactly {one} {noun}",
    "color": "are the shapes {color}",
}
# Answer variants annotators give besides the canonical answer ({x} is the canonical answer).
ANSWER_VARIANTS = {
    "color": ("{x} color", "bright {x}"),
    "shape": ("{shapes}", "{x} shape"),
    "count": ("{digit}",),
    "position": ("{x} side", "{p0}"),
}
EXTRA_SHAPE_VARIANTS = {"circle": ("round",), "cross": ("plus sign",)}

# NLVR2 statements about a (left, right) pair of group scenes.
NLVR_TEMPLATES = {
    "more_left": "the left image has more shapes than the right image",
    "more_right": "the right image has more shapes than the left image",
    "same_count": "both images have the same number of shapes",
    "total": "there are exactly {total} shapes in total",
    "both_shape": "both images contain {shapes}",
    "one_shape": "exactly one image contains {shapes}",
    "neither_shape": "neither image contains {shapes}",
    "same_shape": "both images show the same kind of shape",
    "both_color": "the shapes in both images are {color}",
    "side_color": "the shapes in the {side} image are {color}",
    "same_color": "the shapes in the two images have the same color",
    "both_position": "in both images the shapes are {p0}",
    "side_position": "the shapes in the {side} image are {p0}",
}

# Referring expressions for one thing of a mixed scene. {relation}: "on the left", "at the top", ...
REFER_TEMPLATES = ("the {color} {shape}", "the {shape}", "the {color} shape", "the {shape} {relation}",
                   "the shape {relation}", "the {color} {shape} {relation}")
RELATIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]  # keys are names, not emitted words
    return [s for v in value for s in _strings(v)]


def template_words() -> set[str]:
    """Lower-case alphabetic words of every template, word pool, attribute and answer (placeholders removed)."""
    texts = _strings([POSITION_PHRASES, CAPTION_TEMPLATES, SPAM_TEMPLATES, SPAM_WORDS, FILENAME_PATTERNS,
                      VQA_TEMPLATES, YES_NO_TEMPLATES, ANSWER_VARIANTS, EXTRA_SHAPE_VARIANTS, NLVR_TEMPLATES,
                      REFER_TEMPLATES, RELATIONS, PLURALS, list(NUMBER_WORDS.values()), list(COLORS), list(SHAPES),
                      list(COUNTS.values()), list(POSITIONS), ["a", "is", "are", "yes", "no", "left", "right"]])
    return {word for text in texts for word in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower()))}
