"""Box IoU and grounding accuracy at IoU >= 0.5 for RefCOCO-style (x, y, w, h) boxes."""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from evaluation.metrics.ids import check_ids


def _as_boxes(boxes, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must hold (x, y, w, h) boxes, got shape {np.shape(boxes)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains a non-finite coordinate")
    if (array[:, 2:] < 0).any():
        raise ValueError(f"{name} has a box with negative width or height")
    return array


def box_iou(pred, target) -> np.ndarray:
    """IoU of aligned box pairs in COCO (x, y, w, h) pixels, continuous coordinates (no +1).

    Two boxes with zero union (both empty) have IoU 0.
    """
    a, b = _as_boxes(pred, "pred"), _as_boxes(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"pred has {len(a)} boxes, target {len(b)}")
    left = np.maximum(a[:, 0], b[:, 0])
    top = np.maximum(a[:, 1], b[:, 1])
    right = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    bottom = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def grounding_accuracy(
    predictions: Mapping[Hashable, Sequence[float]],
    targets: Mapping[Hashable, Sequence[float]],
    threshold: float = 0.5,
) -> dict[str, float]:
    """Share (percent) of targets whose predicted box has IoU >= threshold, plus the mean IoU."""
    check_ids(predictions, targets, "targets", "targets")
    keys = list(targets)
    iou = box_iou([predictions[key] for key in keys], [targets[key] for key in keys])
    return {
        "accuracy": 100.0 * float(np.mean(iou >= threshold)),
        "mean_iou": float(np.mean(iou)),
        "num_examples": len(keys),
    }
