"""The official VQA accuracy: normalisation corner cases and the leave-one-annotator-out formula, by hand."""
import pytest

from evaluation.metrics.vqa import normalize_answer, question_accuracy, vqa_accuracy


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("a dog", "dog"),
        ("The Dog!", "dog"),
        ("an apple", "apple"),
        ("yes.", "yes"),
        ("yes", "yes"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("1,000", "1000"),
        ("1,000 red-white", "1000 redwhite"),  # a digit,digit group makes every mark vanish
        ("red-white", "red white"),  # otherwise a mark not touching a space becomes a space
        ("red - white", "red white"),  # and one touching a space is deleted
        ("3.5", "3.5"),  # a period before a digit stays
        ("3.", "3"),
        ("  left\tside\n", "left side"),
        ("im", "im"),  # the official table's "Im" key is capitalised and never matches
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def _leave_one_out(matching: int, total: int = 10) -> float:
    # Written out per the definition: annotator i left out, the others vote.
    accs = []
    for i in range(total):
        others = matching - (1 if i < matching else 0)
        accs.append(min(1.0, others / 3))
    return sum(accs) / total


def test_two_of_ten_matching_is_exactly_0_6():
    answers = ["dog", "dog"] + ["cat"] * 8
    # Two annotators matching: leaving out one of them leaves 1 vote (1/3), leaving out any of the
    # other 8 leaves 2 votes (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 6/10.
    assert (2 * (1 / 3) + 8 * (2 / 3)) / 10 == pytest.approx(0.6)
    assert question_accuracy("dog", answers) == pytest.approx(0.6, abs=1e-15)
    assert _leave_one_out(2) == pytest.approx(0.6)


@pytest.mark.parametrize(("matching", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_accuracy_by_number_of_matching_annotators(matching, expected):
    answers = ["dog"] * matching + ["cat"] * (10 - matching)
    if matching == 10:
        answers[-1] = "Dog"  # keep the annotators disagreeing so both sides are normalised
    assert question_accuracy("dog", answers) == pytest.approx(expected)
    assert _leave_one_out(matching) == pytest.approx(expected)


def test_normalisation_applies_when_annotators_disagree():
    answers = ["2", "2", "two", "3"] + ["4"] * 6  # "two" normalises to "2": three matches
    assert question_accuracy("Two", answers) == pytest.approx(0.9)
    assert question_accuracy("a dog", ["dog", "dog", "dog", "cat"] + ["bird"] * 6) == pytest.approx(0.9)
    assert question_accuracy("yes.", ["yes"] * 5 + ["no"] * 5) == pytest.approx(1.0)
    assert question_accuracy("dont", ["don't"] * 3 + ["no"] * 7) == pytest.approx(0.9)


def test_unanimous_annotators_are_not_normalised_like_the_official_evaluator():
    # The official code normalises only when the annotators' answers differ; the comparison is
    # still case-insensitive. normalize="always" follows the seeds' toolbox instead.
    assert question_accuracy("two", ["2"] * 10) == 0.0
    assert question_accuracy("two", ["2"] * 10, normalize="always") == 1.0
    assert question_accuracy("Yes", ["yes"] * 10) == 1.0


def test_single_answer_is_exact_match():
    assert question_accuracy("harry potter", ["Harry Potter"]) == 1.0
    assert question_accuracy("the harry potter", ["Harry Potter"]) == 0.0
    assert question_accuracy("the harry potter", ["Harry Potter"], normalize="always") == 1.0


def test_vqa_accuracy_overall_and_per_answer_type():
    answers = {
        1: ["yes"] * 10,
        2: ["2", "2", "3"] + ["4"] * 7,
        3: ["red"] * 4 + ["blue"] * 6,
    }
    predictions = {1: "yes", 2: "two", 3: "red"}  # 1.0, 0.6 (two "2" matches), 1.0
    types = {1: "yes/no", 2: "number", 3: "other"}
    result = vqa_accuracy(predictions, answers, answer_types=types)
    assert result["accuracy"] == pytest.approx(100 * (1.0 + 0.6 + 1.0) / 3)
    assert result["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 60.0, "other": 100.0})
    assert result["per_question"] == pytest.approx({1: 1.0, 2: 0.6, 3: 1.0})
    assert result["num_questions"] == 3
    assert "per_answer_type" not in vqa_accuracy(predictions, answers)


@pytest.mark.parametrize(
    ("predictions", "answers", "kwargs", "message"),
    [
        ({1: "a"}, {1: ["a"], 2: ["b"]}, {}, "do not match"),
        ({1: "a", 5: "b"}, {1: ["a"]}, {}, "do not match"),
        ({}, {}, {}, "empty"),
        ({1: "a"}, {1: []}, {}, "non-empty"),
        ({1: "a"}, {1: "a"}, {}, "non-empty list"),
        ({1: 3}, {1: ["3"]}, {}, "must be a string"),
        ({1: "a"}, {1: ["a"]}, {"answer_types": {}}, "answer type"),
        ({1: "a"}, {1: ["a"]}, {"normalize": "sometimes"}, "normalize"),
    ],
)
def test_invalid_inputs(predictions, answers, kwargs, message):
    with pytest.raises(ValueError, match=message):
        vqa_accuracy(predictions, answers, **kwargs)
