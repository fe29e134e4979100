"""Building the whole world on disk: web and held-out shards, the labelled set, the clean annotated set, the test sets,
NLVR2's and RefCOCO's training splits.

    python -m shapeworld DIR [--seed S] [--size small|default]

Every part draws from its own stream, np.random.default_rng([seed, stream]), so resizing one part leaves the others
unchanged; the same (seed, sizes) gives byte-identical files. The build is written to a temporary sibling folder
and renamed into place; the marker WORLD.json is written last, so `ensure_world` rebuilds a half-written folder.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shapeworld import annotated
from shapeworld.web import write_web

VERSION = 3  # raised whenever the same seed would give other scenes (3: NLVR2's and RefCOCO's training splits)
MARKER = "WORLD.json"


@dataclass(frozen=True)
class WorldSize:
    web_shards: int
    web_per_shard: int
    heldout_shards: int
    heldout_per_shard: int
    labelled_shards: int  # the ImageNet role: labelled images that pre-train the vision encoder
    labelled_per_shard: int
    clean_images: int
    test_images: int  # caption / retrieval images, each a different combination (at most 288)
    vqa_questions: int  # over the test images, at most 6 per image
    nlvr_pairs: int
    refs: int  # referring expressions (RefCOCO refs), over mixed scenes
    train_nlvr_pairs: int  # NLVR2's training split (train/nlvr2/train.json), which fine-tunes the NLVR2 model
    train_refs: int  # RefCOCO's training split (train/refcoco), which fine-tunes the grounding model


SIZES: dict[str, WorldSize] = {
    # 4,000 held-out samples: each noise kind is about 7% of them, and its removal rate is then known to about +-3.5
    # points (95%), against +-7 at 1,000, too wide to tell a filter at 90% from one at 85%. 1,600 clean images (the
    # COCO role): the filter fine-tuned on them kept 2-4 points more clean captions than on 800 (RESULTS.md)
    "default": WorldSize(web_shards=32, web_per_shard=500, heldout_shards=8, heldout_per_shard=500, labelled_shards=32,
                         labelled_per_shard=500, clean_images=1600, test_images=150, vqa_questions=400, nlvr_pairs=200,
                         refs=120, train_nlvr_pairs=4000, train_refs=4000),
    "small": WorldSize(web_shards=2, web_per_shard=100, heldout_shards=1, heldout_per_shard=100, labelled_shards=2,
                       labelled_per_shard=100, clean_images=60, test_images=30, vqa_questions=60, nlvr_pairs=40,
                       refs=20, train_nlvr_pairs=40, train_refs=40),
}
STREAMS = {"web": 0, "heldout": 1, "clean": 2, "test_captions": 3, "test_vqa": 4, "test_nlvr2": 5, "test_refcoco": 6,
           "labelled": 7, "train_nlvr2": 8, "train_refcoco": 9}


def resolve_size(size: str = "default", sizes: dict | None = None) -> WorldSize:
    """SIZES[size] with the fields named in `sizes` replaced (e.g. {"web_shards": 4})."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (known: {', '.join(SIZES)})")
    return dataclasses.replace(SIZES[size], **(sizes or {}))


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[name]])


def _write_parts(work: Path, seed: int, n: WorldSize) -> dict:
    counts = {
        "web": write_web(work / "web", seed, STREAMS["web"], n.web_shards, n.web_per_shard),
        "heldout": write_web(work / "heldout", seed, STREAMS["heldout"], n.heldout_shards, n.heldout_per_shard),
        "labelled": annotated.write_labelled(work / "labelled", stream(seed, "labelled"), n.labelled_shards,
                                             n.labelled_per_shard),
        "clean": annotated.write_clean(work / "clean", stream(seed, "clean"), n.clean_images),
    }
    test = work / "test"
    scenes = annotated.distinct_scenes(stream(seed, "test_captions"), n.test_images)
    ids = annotated.write_test_captions(test, scenes)
    annotated.write_test_vqa(test, scenes, ids, stream(seed, "test_vqa"), n.vqa_questions)
    counts["test"] = {"images": len(ids), "vqa_questions": n.vqa_questions,
                      "nlvr2": annotated.write_nlvr2(test / "nlvr2", stream(seed, "test_nlvr2"), n.nlvr_pairs),
                      "refcoco": annotated.write_refcoco(test / "refcoco", test / "coco/images/train2014",
                                                         stream(seed, "test_refcoco"), n.refs)}
    train = work / "train"
    counts["train"] = {"nlvr2": annotated.write_nlvr2(train / "nlvr2", stream(seed, "train_nlvr2"), n.train_nlvr_pairs,
                                                      "train"),
                       "refcoco": annotated.write_refcoco(train / "refcoco", train / "refcoco/images",
                                                          stream(seed, "train_refcoco"), n.train_refs, ("train",))}
    return counts


def _marker(seed: int, size: str, resolved: WorldSize) -> dict:
    return {"version": VERSION, "seed": seed, "size": size, "sizes": dataclasses.asdict(resolved)}


def build_world(root, seed: int = 0, size: str = "default", sizes: dict | None = None) -> Path:
    """Write the world under `root` (replacing what is there) and return `root`."""
    root = Path(root)
    resolved = resolve_size(size, sizes)
    root.parent.mkdir(parents=True, exist_ok=True)
    work = root.with_name(f".{root.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        counts = _write_parts(work, seed, resolved)
        files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
        if root.exists():
            shutil.rmtree(root)
        work.rename(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    marker = {**_marker(seed, size, resolved), "counts": counts, "files": files}
    (root / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    return root


def ensure_world(root, seed: int = 0, size: str = "default", sizes: dict | None = None) -> Path:
    """Build the world under `root` unless a complete build of this version, seed and size is already there."""
    expected = _marker(seed, size, resolve_size(size, sizes))
    try:
        found = json.loads((Path(root) / MARKER).read_text(encoding="utf-8"))
        if {key: found.get(key) for key in expected} == expected:
            return Path(root)
    except (OSError, ValueError):
        pass
    return build_world(root, seed, size, sizes)
