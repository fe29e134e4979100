"""Shape world captions: correct phrasings, noise of each kind, the parser, and the vocabulary."""
from __future__ import annotations

import re

import numpy as np
import pytest

from shapeworld.captions import (NOISE_KINDS, NOISE_MIX, SPAM_SENTENCES, VOCABULARY, canonical, corrupt, draw_noise,
                                 is_correct, parse, phrasings)
from shapeworld.questions import (_nlvr_candidates, answer_list, nlvr_statement, referring_expressions,
                                  vqa_questions)
from shapeworld.scenes import combinations, sample_mixed_scene, sample_scene

ATTRIBUTES = ("shape", "color", "count", "position")


def words(text: str) -> set[str]:
    """Lower-cased alphabetic pieces (file names split into letters and digits; digits ignored)."""
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(0)
    return [sample_scene(rng, combo) for combo in combinations()]


def test_phrasings_are_distinct_correct_lower_case_descriptions(scenes):
    for scene in scenes:
        texts = phrasings(scene)
        assert len(texts) >= 5 and len(set(texts)) == len(texts)
        for text in texts:
            assert text == text.lower() and text == text.strip() and text[-1] not in ".!?,"
            assert not text.startswith("a picture of")
            assert is_correct(text, scene), text
        assert canonical(scene) == texts[0]


@pytest.mark.parametrize("combo, expected", [
    (("circle", "red", 2, "left"), "two red circles on the left"),
    (("circle", "red", 1, "left"), "a red circle on the left"),
    (("square", "blue", 3, "top"), "three blue squares at the top"),
    (("cross", "yellow", 1, "bottom"), "a yellow cross at the bottom"),
    (("cross", "white", 3, "right"), "three white crosses on the right"),
])
def test_canonical_caption_is_short_and_uniform(combo, expected):
    assert canonical(sample_scene(np.random.default_rng(0), combo)) == expected


def test_singular_and_plural_agree():
    one = phrasings(sample_scene(np.random.default_rng(0), ("triangle", "green", 1, "right")))
    three = phrasings(sample_scene(np.random.default_rng(0), ("triangle", "green", 3, "right")))
    assert all("triangles" not in t and " are " not in f" {t} " for t in one)
    assert all("triangles" in t and " is " not in f" {t} " for t in three)


def test_wrong_kinds_change_exactly_one_attribute_and_are_judged_incorrect(scenes):
    rng = np.random.default_rng(1)
    for scene in scenes:
        for kind in NOISE_KINDS[:4]:
            text = corrupt(scene, kind, rng)
            parsed, attribute = parse(text), kind.removeprefix("wrong_")
            assert not is_correct(text, scene), (kind, text)
            for name in ATTRIBUTES:
                value = getattr(scene, name)
                assert (parsed[name] != value) if name == attribute else (parsed[name] == value), (kind, text)
            assert parsed[attribute] not in (None, "conflict")


def test_other_noise_kinds(scenes):
    rng = np.random.default_rng(2)
    scene = scenes[0]
    names = [corrupt(scene, "filename", rng) for _ in range(200)]
    assert len(set(names)) > 150
    assert all(re.fullmatch(r"[A-Za-z]*[_-]?[0-9_-]+(\.(jpg|JPG|png|jpeg))?", n) for n in names), names[:20]
    assert set().union(*map(words, names)) >= {"img", "dsc", "photo", "jpg", "png"}
    spam = {corrupt(scene, "spam", rng) for _ in range(400)}
    assert spam == set(SPAM_SENTENCES) and len(SPAM_SENTENCES) >= 20
    assert len({s.split()[0] for s in SPAM_SENTENCES}) >= 8  # not one template
    assert corrupt(scene, "empty", rng) == ""
    for text in names + sorted(spam):
        assert not is_correct(text, scene)
        assert parse(text)["shape"] is None and parse(text)["color"] is None
    with pytest.raises(ValueError):
        corrupt(scene, "wrong_size", rng)
    with pytest.raises(ValueError):
        phrasings(sample_mixed_scene(rng))


def test_noise_fractions_match_the_mix():
    rng = np.random.default_rng(3)
    draws = [draw_noise(rng) for _ in range(40000)]
    assert set(NOISE_MIX) == {"clean", *NOISE_KINDS} and abs(sum(NOISE_MIX.values()) - 1) < 1e-9
    assert NOISE_MIX["clean"] == pytest.approx(0.60)
    for kind, share in NOISE_MIX.items():
        assert abs(draws.count(kind) / len(draws) - share) < 0.01, kind


@pytest.mark.parametrize("text, expected", [
    ("two red circles on the left", (2, "red", "circle", "left")),
    ("an image with a blue square at the top", (1, "blue", "square", "top")),
    ("an image with two blue squares", (2, "blue", "square", None)),  # "an" before "image" is no count
    ("one of the circles is on the right", (None, None, "circle", "right")),
    ("there is one", (None, None, None, None)),
    ("Three BLUE Crosses at the TOP.", (3, "blue", "cross", "top")),
    ("2 green triangles at the bottom", (2, "green", "triangle", "bottom")),
    ("img_4821.jpg", (None, None, None, None)),
    ("photo-2019-05-12.png", (None, None, None, None)),
    ("", (None, None, None, None)),
    ("a circle and more circles", (1, None, "circle", None)),
    ("two red circles and three blue squares", ("conflict", "conflict", "conflict", None)),
    ("a red circle on the left or on the right", (1, "red", "circle", "conflict")),
    ("a red red circle", (1, "red", "circle", None)),
])
def test_parse(text, expected):
    parsed = parse(text)
    assert (parsed["count"], parsed["color"], parsed["shape"], parsed["position"]) == expected


def test_is_correct_needs_all_four_attributes():
    scene = sample_scene(np.random.default_rng(0), ("circle", "red", 2, "left"))
    assert is_correct("two red circles on the left", scene)
    assert is_correct("on the left there are 2 red circles", scene)
    assert not is_correct("red circles on the left", scene)
    assert not is_correct("two red circles", scene)
    assert not is_correct("two red circles on the left and two blue circles", scene)
    assert not is_correct("two red circles on the left", sample_mixed_scene(np.random.default_rng(0)))


def _every_text(scenes) -> list[str]:
    rng = np.random.default_rng(4)
    texts = list(SPAM_SENTENCES) + answer_list()
    for scene in scenes:
        texts += phrasings(scene) + [corrupt(scene, kind, rng) for kind in NOISE_KINDS for _ in range(3)]
        for question, _, answers in vqa_questions(scene, rng) + vqa_questions(scene, rng):
            texts += [question, *answers]
    for left in scenes[::7]:
        for right in scenes[::11]:
            texts += [text for _, text, _ in _nlvr_candidates(left, right)]
    for _ in range(300):
        mixed = sample_mixed_scene(rng)
        texts += [e for i in range(len(mixed.things)) for e in referring_expressions(mixed, i)]
    return texts


def test_every_emitted_word_is_in_the_vocabulary(scenes):
    assert VOCABULARY == sorted(set(VOCABULARY)) and all(w == w.lower() and w.isalpha() for w in VOCABULARY)
    used = set().union(*(words(text) for text in _every_text(scenes)))
    assert used <= set(VOCABULARY), sorted(used - set(VOCABULARY))
    assert {"img", "dsc", "photo", "png", "jpg", "shapes", "crosses", "four", "yes", "no"} <= set(VOCABULARY)
    assert len(VOCABULARY) < 300
    # nlvr_statement only draws from the candidates checked above
    rng = np.random.default_rng(5)
    assert words(nlvr_statement(scenes[0], scenes[1], rng)[0]) <= set(VOCABULARY)
