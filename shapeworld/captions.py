"""Captions of group scenes: correct phrasings, web-style noise of known kinds, and a parser that checks captions."""
from __future__ import annotations

import re

import numpy as np

from shapeworld import templates as tpl
from shapeworld.scenes import COLORS, COUNTS, POSITIONS, SHAPES, Scene

NOISE_KINDS = ("wrong_color", "wrong_shape", "wrong_count", "wrong_position", "filename", "spam", "empty")
# Share of web samples per caption kind ("clean": a correct phrasing); 40 % noisy in all.
NOISE_MIX = {"clean": 0.60, "wrong_color": 0.08, "wrong_shape": 0.08, "wrong_count": 0.06, "wrong_position": 0.06,
             "filename": 0.04, "spam": 0.04, "empty": 0.04}
VOCABULARY: list[str] = sorted(tpl.template_words())


def noun(shape: str, count: int) -> str:
    """The shape word, plural for more than one thing."""
    return shape if count == 1 else tpl.PLURALS[shape]


def phrasings_for(shape: str, color: str, count: int, position: str) -> list[str]:
    """Every phrasing of a group of `count` `color` `shape`s in the `position` half; the first is canonical."""
    words = {"a": "a" if count == 1 else COUNTS[count], "one": COUNTS[count], "be": "is" if count == 1 else "are",
             "noun": noun(shape, count), "color": color}
    words.update({f"p{i}": phrase for i, phrase in enumerate(tpl.POSITION_PHRASES[position])})
    return [template.format(**words) for template in tpl.CAPTION_TEMPLATES]


def _group(scene: Scene) -> tuple[str, str, int, str]:
    if scene.count is None:
        raise ValueError("a mixed scene has no group caption")
    return scene.shape, scene.color, scene.count, scene.position


def phrasings(scene: Scene) -> list[str]:
    """At least 5 distinct correct descriptions of a group scene, lower case, no final punctuation."""
    return phrasings_for(*_group(scene))


def canonical(scene: Scene) -> str:
    """The short uniform caption a perfectly trained captioner produces, e.g. "two red circles on the left"."""
    return phrasings(scene)[0]


def _spam_pool() -> list[str]:
    pool, n = [], len(tpl.SPAM_TEMPLATES)
    products, adjectives, gifts = tpl.SPAM_WORDS["product"], tpl.SPAM_WORDS["adj"], tpl.SPAM_WORDS["gift"]
    for i in range(2 * n):
        sentence = tpl.SPAM_TEMPLATES[i % n].format(product=products[5 * i % len(products)],
                                                  adj=adjectives[3 * i % len(adjectives)],
                                                  gift=gifts[(i + i // n) % len(gifts)])
        if sentence not in pool:
            pool.append(sentence)
    return pool


SPAM_SENTENCES: list[str] = _spam_pool()


def _filename(rng: np.random.Generator) -> str:
    pattern = tpl.FILENAME_PATTERNS[rng.integers(len(tpl.FILENAME_PATTERNS))]
    year, month, day = int(rng.integers(2008, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    text = pattern.replace("{date}", f"{year}-{month:02d}-{day:02d}").replace("{day}", f"{year}{month:02d}{day:02d}")
    return re.sub(r"\{n(\d)\}", lambda m: "".join(str(d) for d in rng.integers(0, 10, int(m.group(1)))), text)


def corrupt(scene: Scene, kind: str, rng: np.random.Generator) -> str:
    """A caption of `scene` wrong in exactly the way `kind` (one of NOISE_KINDS) names."""
    if kind == "empty":
        return ""
    if kind == "spam":
        return SPAM_SENTENCES[rng.integers(len(SPAM_SENTENCES))]
    if kind == "filename":
        return _filename(rng)
    attribute = kind.removeprefix("wrong_")
    values = {"color": list(COLORS), "shape": list(SHAPES), "count": list(COUNTS), "position": list(POSITIONS)}
    if attribute not in values:
        raise ValueError(f"unknown noise kind {kind!r} (known: {', '.join(NOISE_KINDS)})")
    group = dict(zip(("shape", "color", "count", "position"), _group(scene)))
    others = [v for v in values[attribute] if v != group[attribute]]
    group[attribute] = others[rng.integers(len(others))]
    options = phrasings_for(**group)
    return options[rng.integers(len(options))]


def draw_noise(rng: np.random.Generator) -> str:
    """"clean" or a NOISE_KINDS value, with the probabilities of NOISE_MIX."""
    kinds, shares = list(NOISE_MIX), np.cumsum(list(NOISE_MIX.values()))
    return kinds[min(int(np.searchsorted(shares, rng.random(), side="right")), len(kinds) - 1)]


_COLOR_WORDS = {c: c for c in COLORS}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in tpl.PLURALS.items()}}
_COUNT_WORDS = {word: n for n, word in tpl.NUMBER_WORDS.items() if n > 1}
_ONE_WORDS = ("a", "an", "one")
_POSITION_WORDS = {p: p for p in POSITIONS}


def parse(text: str) -> dict:
    """The count, color, shape and position a text names: None when absent, "conflict" when two differ.

    Counts: "two" ... "six" anywhere; "a" / "an" / "one" and digits only right before a colour or shape word.
    """
    tokens = re.findall(r"[a-z]+|\d+", text.lower())
    found: dict[str, set] = {"count": set(), "color": set(), "shape": set(), "position": set()}
    for i, token in enumerate(tokens):
        before_attribute = i + 1 < len(tokens) and (tokens[i + 1] in _COLOR_WORDS or tokens[i + 1] in _SHAPE_WORDS)
        if token in _COUNT_WORDS:
            found["count"].add(_COUNT_WORDS[token])
        elif before_attribute and token in _ONE_WORDS:
            found["count"].add(1)
        elif before_attribute and token.isdigit():
            found["count"].add(int(token))
        for key, table in (("color", _COLOR_WORDS), ("shape", _SHAPE_WORDS), ("position", _POSITION_WORDS)):
            if token in table:
                found[key].add(table[token])
    return {key: None if not values else values.pop() if len(values) == 1 else "conflict"
            for key, values in found.items()}


def is_correct(text: str, scene: Scene) -> bool:
    """Whether `text` names all four attributes of a group scene, each with the scene's value."""
    parsed = parse(text)
    return scene.count is not None and all(
        parsed[key] == getattr(scene, key) for key in ("count", "color", "shape", "position"))
