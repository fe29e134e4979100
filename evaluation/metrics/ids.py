"""The check every metric makes first: predictions and ground truth cover exactly the same ids."""
from __future__ import annotations

from collections.abc import Mapping


def check_ids(predictions: Mapping, expected: Mapping, what: str, argument: str) -> None:
    """Raise ValueError when `expected` (the `argument` of the metric, holding `what`) is empty, or when the
    prediction ids differ from its ids, naming a few of each side."""
    if not expected:
        raise ValueError(f"no {what}: `{argument}` is empty")
    missing = [key for key in expected if key not in predictions]
    extra = [key for key in predictions if key not in expected]
    if missing or extra:
        raise ValueError(
            f"prediction ids do not match the {what}: {len(missing)} without a prediction (e.g. {missing[:5]}), "
            f"{len(extra)} predictions for unknown ids (e.g. {extra[:5]})"
        )
