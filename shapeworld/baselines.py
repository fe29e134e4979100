"""What the NLVR2 and grounding figures stand beside: chance and trivial baselines on the world's test sets, with
the same metrics the evaluation suite computes (evaluation/metrics).

- NLVR2: chance (50%) and the majority label of the training split, predicted for every test pair.
- Grounding (accuracy at IoU >= 0.5, per split): the centre box (centred, the training split's mean width and
  height as fractions of the image) and the largest object (the largest box the image's instances hold: a
  baseline that knows where every object is but not which one the expression names).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.datasets.fields import load_json
from evaluation.datasets.nlvr import read_nlvr2
from evaluation.datasets.refcoco import read_refcoco
from evaluation.metrics import grounding_accuracy, nlvr_accuracy


def nlvr_baselines(world) -> dict:
    world = Path(world)
    train = read_nlvr2(world / "train/nlvr2/train.json")
    test = read_nlvr2(world / "test/nlvr2/dev.json")
    majority = sum(r.label for r in train) * 2 >= len(train)
    labels = {r.identifier: r.label for r in test}
    return {"chance": 50.0, "majority": nlvr_accuracy({k: majority for k in labels}, labels)["accuracy"],
            "majority_label": majority, "test_pairs": len(test), "test_true": sum(labels.values())}


def _image_sizes(instances) -> dict[int, tuple[int, int]]:
    return {image["id"]: (image["width"], image["height"]) for image in load_json(instances)["images"]}


def grounding_baselines(world, splits=("testA", "testB")) -> dict:
    world = Path(world)
    train_dir, test_dir = world / "train/refcoco", world / "test/refcoco"
    sizes = _image_sizes(train_dir / "instances.json")
    fractions = np.array([(r.bbox[2] / sizes[r.image_id][0], r.bbox[3] / sizes[r.image_id][1])
                          for r in read_refcoco(train_dir / "refs(unc).json", train_dir / "instances.json", "train")])
    mean_w, mean_h = fractions.mean(axis=0)
    instances = load_json(test_dir / "instances.json")
    test_sizes = _image_sizes(test_dir / "instances.json")
    largest: dict[int, list[float]] = {}
    for annotation in instances["annotations"]:
        best = largest.get(annotation["image_id"])
        if best is None or annotation["bbox"][2] * annotation["bbox"][3] > best[2] * best[3]:
            largest[annotation["image_id"]] = list(annotation["bbox"])
    out = {}
    for split in splits:
        records = read_refcoco(test_dir / "refs(unc).json", test_dir / "instances.json", split)
        samples = [(n, r) for r in records for n in range(len(r.sentences))]  # one per sentence, as the task
        targets = {(r.ref_id, n): list(r.bbox) for n, r in samples}
        centre = {}
        for n, r in samples:
            width, height = test_sizes[r.image_id]
            w, h = mean_w * width, mean_h * height
            centre[(r.ref_id, n)] = [(width - w) / 2, (height - h) / 2, w, h]
        out[split] = {"samples": len(samples),
                      "centre": grounding_accuracy(centre, targets)["accuracy"],
                      "largest": grounding_accuracy({(r.ref_id, n): largest[r.image_id] for n, r in samples},
                                                    targets)["accuracy"]}
    return out
