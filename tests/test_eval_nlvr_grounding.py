"""NLVR2 accuracy / consistency and grounding IoU / accuracy on hand-made predictions."""
import numpy as np
import pytest

from evaluation.metrics.grounding import box_iou, grounding_accuracy
from evaluation.metrics.nlvr import nlvr_accuracy


def test_nlvr_accuracy_and_consistency():
    labels = {"dev-1-0-0": True, "dev-1-1-0": False, "dev-1-0-1": True, "dev-2-0-0": False}
    predictions = {"dev-1-0-0": True, "dev-1-1-0": True, "dev-1-0-1": True, "dev-2-0-0": False}
    result = nlvr_accuracy(predictions, labels)
    assert result["accuracy"] == 75.0
    # Sentences: dev-1-?-0 (one pair wrong), dev-1-?-1, dev-2-?-0 -> 2 of 3 fully correct.
    assert result["consistency"] == pytest.approx(200 / 3)
    assert result["num_examples"] == 4
    assert nlvr_accuracy({"dev-1-0-0": np.bool_(True)}, {"dev-1-0-0": True})["accuracy"] == 100.0


@pytest.mark.parametrize(
    ("predictions", "labels", "message"),
    [
        ({"dev-1-0-0": "True"}, {"dev-1-0-0": True}, "must be a bool"),
        ({}, {"dev-1-0-0": True}, "do not match"),
        ({"dev-1-0-0": True, "dev-9-0-0": True}, {"dev-1-0-0": True}, "do not match"),
        ({}, {}, "empty"),
        ({"dev-1-0": True}, {"dev-1-0": True}, "identifier"),
    ],
)
def test_nlvr_invalid_inputs(predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        nlvr_accuracy(predictions, labels)


def test_box_iou_hand_made_cases():
    pred = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 0, 0]]
    target = [[0, 0, 10, 10], [20, 20, 5, 5], [10, 0, 10, 10], [5, 0, 10, 10], [0, 0, 10, 5], [5, 5, 0, 0]]
    # identical, disjoint, touching edges, half-shifted (50 / 150), half-height (50 / 100), both empty.
    np.testing.assert_allclose(box_iou(pred, target), [1.0, 0.0, 0.0, 1 / 3, 0.5, 0.0])
    np.testing.assert_allclose(box_iou([1.5, 2.0, 4.0, 3.0], [1.5, 2.0, 4.0, 3.0]), [1.0])


def test_grounding_accuracy_counts_iou_at_least_half():
    targets = {"same": [0, 0, 10, 10], "apart": [50, 50, 10, 10], "third": [5, 0, 10, 10], "half": [0, 0, 10, 5]}
    predictions = {key: [0, 0, 10, 10] for key in targets}
    result = grounding_accuracy(predictions, targets)
    assert result["accuracy"] == 50.0  # "same" and "half" (IoU exactly 0.5) count
    assert result["mean_iou"] == pytest.approx((1 + 0 + 1 / 3 + 0.5) / 4)
    assert result["num_examples"] == 4


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        ([0, 0, -1, 5], [0, 0, 1, 1], "negative"),
        ([0, 0, np.nan, 5], [0, 0, 1, 1], "non-finite"),
        ([0, 0, 1], [0, 0, 1, 1], "x, y, w, h"),
        ([[0, 0, 1, 1], [0, 0, 1, 1]], [0, 0, 1, 1], "boxes"),
    ],
)
def test_box_iou_invalid(pred, target, message):
    with pytest.raises(ValueError, match=message):
        box_iou(pred, target)


def test_grounding_ids_must_match():
    with pytest.raises(ValueError, match="do not match"):
        grounding_accuracy({"a": [0, 0, 1, 1]}, {"b": [0, 0, 1, 1]})
