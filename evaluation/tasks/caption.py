"""Captioning (COCO, NoCaps, Flickr30k): beam-search captions on the captioner actors, COCO caption metrics.

The captioner is called with the protocol's generation settings, its family's keywords (BLIP: max_length /
min_length, counting the start token and the prompt; BLIP-2: max_new_tokens / min_new_tokens, length_penalty).
"""
from __future__ import annotations

from evaluation.calls import Method
from evaluation.datasets import DatasetFormatError
from evaluation.metrics import caption_scores
from evaluation.protocols import generation_settings
from evaluation.tasks.common import Outcome, chunks, image_batches


def run_caption(task, data, pool) -> Outcome:
    protocol = task.protocol
    records = data.records
    for record in records:
        if not record.references:
            raise DatasetFormatError(task.dataset.files["annotations"], f"image {record.image_id} has no reference caption")
    settings = generation_settings(protocol)
    batches = image_batches(chunks([r.image for r in records], protocol["batch_size"]), pool.image_size)
    captions = [c for out in pool.map(Method.CAPTION, ((None, (images, settings)) for images in batches)) for c in out]
    wanted = protocol["metrics"]
    # Keyed by position: CIDEr's document frequencies come from these references, one entry per image.
    scores = caption_scores(dict(enumerate(captions)), {i: list(r.references) for i, r in enumerate(records)},
                            spice="auto" if "SPICE" in wanted else False, meteor="METEOR" in wanted)
    return Outcome(
        metrics={name: 100.0 * scores[name] for name in wanted if name in scores},
        samples=len(records),
        unavailable={name: why for name, why in scores["unavailable_reasons"].items() if name in wanted},
        predictions=[{"image_id": r.image_id, "caption": c} for r, c in zip(records, captions)],
    )
