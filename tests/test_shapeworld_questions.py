"""Shape world questions: VQA answers, NLVR2 statement truth and balance, unique referring expressions."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from shapeworld.captions import parse
from shapeworld.questions import answer_list, nlvr_statement, referring_expressions, vqa_questions
from shapeworld.scenes import COUNTS, combinations, sample_mixed_scene, sample_scene

NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(0)
    return [sample_scene(rng, combo) for combo in combinations()]


def test_vqa_questions_have_ten_answers_with_the_true_answer_as_majority(scenes):
    rng = np.random.default_rng(1)
    candidates, with_variants, yes_no = set(answer_list()), 0, Counter()
    for scene in scenes:
        asked = vqa_questions(scene, rng)
        assert [t for _, t, _ in asked] == ["other", "other", "number", "other", "yes/no", "yes/no"]
        truth = [scene.color, scene.shape, COUNTS[scene.count], scene.position, "yes", "no"]
        for (question, answer_type, answers), expected in zip(asked, truth):
            assert len(answers) == 10 and set(answers) <= candidates
            ranked = Counter(answers).most_common()
            assert ranked[0] == (expected, ranked[0][1]) and ranked[0][1] >= 7, (question, answers)
            assert question == question.lower() and not question.endswith("?")
            with_variants += len(ranked) > 1
            if answer_type == "yes/no":
                yes_no[answers[0]] += 1
                _check_yes_no(question, answers[0], scene)
    assert yes_no["yes"] == yes_no["no"] == len(scenes)
    assert 0.3 < with_variants / (4 * len(scenes)) < 0.8  # sometimes 1-3 variants, often none


def _check_yes_no(question: str, answer: str, scene) -> None:
    named = parse(question)
    keys = ["color", "shape", "position"] + (["count"] if "exactly" in question else [])
    named_keys = [k for k in keys if named[k] is not None]
    assert named_keys, question
    assert all(named[k] == getattr(scene, k) for k in named_keys) == (answer == "yes"), (question, answer, scene)


def test_answer_list_is_sorted_unique_and_has_canonical_answers_and_variants():
    answers = answer_list()
    assert answers == sorted(set(answers))
    assert {"red", "circle", "two", "2", "left", "left side", "yes", "no", "circles"} <= set(answers)


def _nlvr_truth(text: str, left, right) -> bool:
    """An independent reading of every statement form."""
    pair = {"left": left, "right": right}
    if match := re.fullmatch(r"the (left|right) image has more shapes than the (left|right) image", text):
        return pair[match[1]].count > pair[match[2]].count
    if text == "both images have the same number of shapes":
        return left.count == right.count
    if match := re.fullmatch(r"there are exactly (\w+) shapes in total", text):
        return left.count + right.count == NUMBERS[match[1]]
    if text == "both images show the same kind of shape":
        return left.shape == right.shape
    if text == "the shapes in the two images have the same color":
        return left.color == right.color
    if match := re.fullmatch(r"(both images|exactly one image|neither image) contains? (\w+)", text):
        hits = (left.shape == parse(match[2])["shape"]) + (right.shape == parse(match[2])["shape"])
        return {"both images": 2, "exactly one image": 1, "neither image": 0}[match[1]] == hits
    if match := re.fullmatch(r"the shapes in (both images|the left image|the right image) are (.+)", text) or \
            re.fullmatch(r"in (both images) the shapes are (.+)", text):
        described = parse(match[2])
        key = "color" if described["color"] else "position"
        which = {"both images": [left, right], "the left image": [left], "the right image": [right]}[match[1]]
        return all(getattr(scene, key) == described[key] for scene in which)
    raise AssertionError(f"unknown statement {text!r}")


def test_nlvr_statements_are_true_exactly_when_labelled_and_balanced():
    rng = np.random.default_rng(2)
    labels, forms = [], set()
    for _ in range(600):
        left = sample_scene(rng)
        right = sample_scene(rng)
        if rng.random() < 0.5:  # shared attributes, so that "both images ..." can be true
            right = sample_scene(rng, (left.shape, right.color, right.count, left.position))
        text, label = nlvr_statement(left, right, rng)
        assert _nlvr_truth(text, left, right) == label, (text, left, right)
        labels.append(label)
        forms.add(re.sub(r"\b(red|green|blue|yellow|purple|white|left|right|top|bottom|\w+s)\b", "_", text))
    assert 0.45 < np.mean(labels) < 0.55
    assert len(forms) >= 10


def _resolve(scene, expression: str) -> list[int]:
    """An independent reading: things of the named colour and shape; with a side word, the most extreme of them."""
    named = parse(expression)
    matches = [i for i, t in enumerate(scene.things)
               if named["color"] in (None, t.color) and named["shape"] in (None, t.shape)]
    side = named["position"]
    if side is None:
        return matches
    axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[side]
    centres = {i: sign * (scene.things[i].box[axis] + scene.things[i].box[axis + 2]) for i in matches}
    best = min(centres.values())
    return [i for i, c in centres.items() if c == best]


def test_referring_expressions_pick_out_their_object_only():
    rng = np.random.default_rng(3)
    relational = 0
    for _ in range(400):
        scene = sample_mixed_scene(rng)
        for index, thing in enumerate(scene.things):
            expressions = referring_expressions(scene, index)
            assert 1 <= len(expressions) <= 3 and len(set(expressions)) == len(expressions)
            assert expressions[0] == f"the {thing.color} {thing.shape}"
            for expression in expressions:
                assert _resolve(scene, expression) == [index], (expression, scene)
                relational += parse(expression)["position"] is not None
    assert relational > 50


def test_referring_expressions_of_identical_things_use_position_or_nothing():
    scene = sample_scene(np.random.default_rng(4), ("circle", "red", 2, "left"))
    for index in range(2):
        for expression in referring_expressions(scene, index):
            assert parse(expression)["position"] in ("top", "bottom", "left", "right")
            assert _resolve(scene, expression) == [index]
