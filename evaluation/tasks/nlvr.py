"""NLVR2: whether each sentence is true of its pair of images, on the reasoner actors; accuracy and consistency."""
from __future__ import annotations

from evaluation.calls import Method
from evaluation.metrics import nlvr_accuracy
from evaluation.tasks.common import Outcome, chunks, image_batches


def run_nlvr(task, data, pool) -> Outcome:
    records = data.records
    batch = task.protocol["batch_size"]
    groups = chunks(records, batch)
    lefts = image_batches(([r.left_image for r in group] for group in groups), pool.image_size)
    rights = image_batches(([r.right_image for r in group] for group in groups), pool.image_size)
    calls = ((None, (left, right, [r.sentence for r in group])) for group, left, right in zip(groups, lefts, rights))
    scores = [float(p) for out in pool.map(Method.NLVR, calls) for p in out]
    predictions = {r.identifier: p > 0.5 for r, p in zip(records, scores)}
    result = nlvr_accuracy(predictions, {r.identifier: r.label for r in records})
    return Outcome({"accuracy": result["accuracy"], "consistency": result["consistency"]}, len(records),
                   predictions=[{"identifier": r.identifier, "prediction": "True" if predictions[r.identifier]
                                 else "False", "score": p} for r, p in zip(records, scores)])
