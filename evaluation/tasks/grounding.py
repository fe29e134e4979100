"""RefCOCO grounding: one box per referring expression (every sentence of a ref, as the toolbox's RefCOCO dataset
makes them) on the grounder actors, mapped to the image's pixels; accuracy at IoU >= the threshold and mean IoU."""
from __future__ import annotations

from PIL import Image

from evaluation.calls import Method
from evaluation.metrics import grounding_accuracy
from evaluation.tasks.common import Outcome, chunks, image_batches


def image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:  # the header only
        return image.size


def run_grounding(task, data, pool) -> Outcome:
    samples = [(record, sentence) for record in data.records for sentence in record.sentences]
    groups = chunks(samples, task.protocol["batch_size"])
    images = image_batches(([r.image for r, _ in group] for group in groups), pool.image_size)
    calls = ((None, (batch, [sentence for _, sentence in group])) for group, batch in zip(groups, images))
    unit = [box for out in pool.map(Method.GROUND, calls) for box in out]
    sizes: dict[str, tuple[int, int]] = {}
    predictions, targets, rows = {}, {}, []
    for index, ((record, sentence), (x0, y0, x1, y1)) in enumerate(zip(samples, unit)):
        width, height = sizes.setdefault(record.image, image_size(record.image))
        box = [float(x0) * width, float(y0) * height, float(x1 - x0) * width, float(y1 - y0) * height]  # x, y, w, h
        predictions[index], targets[index] = box, list(record.bbox)
        rows.append({"ref_id": record.ref_id, "sentence": sentence, "bbox": box})
    result = grounding_accuracy(predictions, targets, threshold=task.protocol["iou_threshold"])
    return Outcome({"accuracy": result["accuracy"], "mean_iou": 100.0 * result["mean_iou"]}, len(samples),
                   predictions=rows)
