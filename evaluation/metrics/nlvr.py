"""NLVR2 accuracy and consistency, as the official NLVR2 evaluation script defines them."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from evaluation.metrics.ids import check_ids


def _sentence_key(identifier: str) -> str:
    # "{split}-{set}-{pair}-{sentence}": a sentence is shared by the pairs of one set, so the
    # official script blanks the pair field to group them.
    parts = identifier.split("-")
    if len(parts) != 4:
        raise ValueError(f"identifier {identifier!r} is not '{{split}}-{{set}}-{{pair}}-{{sentence}}'")
    parts[2] = ""
    return "-".join(parts)


def nlvr_accuracy(predictions: Mapping[str, bool], labels: Mapping[str, bool]) -> dict[str, float]:
    """Accuracy and consistency in percent over the examples in `labels`.

    Consistency is the share of sentences whose every image pair is predicted correctly.
    """
    check_ids(predictions, labels, "examples", "labels")
    correct = 0
    consistent: dict[str, bool] = {}
    for identifier, label in labels.items():
        prediction = predictions[identifier]
        for name, value in (("label", label), ("prediction", prediction)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{identifier}: {name} must be a bool, got {type(value).__name__}")
        hit = bool(prediction) == bool(label)
        correct += hit
        key = _sentence_key(identifier)
        consistent[key] = consistent.get(key, True) and hit
    return {
        "accuracy": 100.0 * correct / len(labels),
        "consistency": 100.0 * sum(consistent.values()) / len(consistent),
        "num_examples": len(labels),
    }
