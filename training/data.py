"""Training data held in memory: images decoded once to uint8 at the model's size, with their texts or labels.

Four sources, read with the project's own readers (never an unpickling auto-decoder):
- webdataset shards (raw img2dataset output, or capfilt's exported bootstrapped dataset whose KEY.json lists every
  kept caption under "capfilt"), through pipelines.reader and pipelines.decode;
- labelled webdataset shards (KEY.jpg + KEY.json {"labels": {name: class index}}), the same way;
- a COCO-Karpathy caption file (the clean annotated set), through evaluation.datasets;
- a VQAv2 question + annotation pair, through evaluation.datasets;
- NLVR2 JSON lines (pairs of images and a sentence) and RefCOCO refs + instances (an image, its expressions and the
  box), through evaluation.datasets.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation.datasets.captions import read_coco_karpathy
from evaluation.datasets.nlvr import read_nlvr2
from evaluation.datasets.refcoco import read_refcoco
from evaluation.datasets.vqa import read_vqa
from models.images import load_image, resize
from models.loading import CLIP_MEAN, CLIP_STD
from pipelines.decode import decode_samples
from pipelines.reader import read_shard
from pipelines.sources import expand_shards

CHUNK = 256  # samples decoded at a time


@dataclass
class PairSet:
    """Images with one or more texts each: a training step draws one text per image."""

    images: np.ndarray  # (N, S, S, 3) uint8
    texts: list[list[str]]
    skipped: dict[str, int] = field(default_factory=dict)  # error type -> samples that could not be used

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class QuestionSet:
    images: np.ndarray
    questions: list[str]
    answers: list[list[str]]  # the annotators' answers (drawn from, so frequent answers weigh more)

    def __len__(self) -> int:
        return len(self.questions)


@dataclass
class LabelSet:
    """Images with one class index per label name each (the labelled set that pre-trains the vision encoder)."""

    images: np.ndarray
    labels: np.ndarray  # (N, len(names)) int64
    names: tuple[str, ...]  # the labels' names, e.g. ("color", "count", "position", "shape")
    skipped: dict[str, int] = field(default_factory=dict)

    def classes(self) -> dict[str, int]:
        """Each label's number of classes, as the data shows them (the largest index + 1)."""
        return {name: int(self.labels[:, k].max()) + 1 for k, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImagePairSet:
    """NLVR2: a pair of images, a sentence about them and whether it is true."""

    images: np.ndarray  # (N, 2, S, S, 3) uint8: left, right
    sentences: list[str]
    labels: np.ndarray  # (N,) int64, 1: true

    def __len__(self) -> int:
        return len(self.sentences)


@dataclass
class BoxSet:
    """Grounding: an image, the referring expressions of one object in it (a step draws one) and its box."""

    images: np.ndarray
    expressions: list[list[str]]
    boxes: np.ndarray  # (N, 4) float32, x0 y0 x1 y1 as fractions of the image's width and height

    def __len__(self) -> int:
        return len(self.expressions)


_last_loaded: dict = {}  # the last local shards this process decoded: {"key": ..., "data": PairSet or LabelSet}


def load_shards(spec: str, image_size: int) -> PairSet:
    """Every usable sample of the shards `spec` names (path, glob, brace range or URL). A sample whose image does
    not decode is counted in `skipped`; one with no caption trains on the empty text, as the web gave it.

    The last local shards decoded are kept for the next call with the same shards, unchanged on disk: the jobs of
    one Ray Train run share a worker process, and the loop's compared models pre-train on the same shards one
    after the other (decoding the 16,000 web images takes about 5 s). Training never writes into a PairSet."""
    return _cached(spec, image_size, "pairs", lambda shards: PairSet(*_decode_shards(spec, shards, image_size, _texts)))


def load_labelled(spec: str, image_size: int) -> LabelSet:
    """Every sample of the shards `spec` names with a decodable image and class labels (KEY.json {"labels": {name:
    class index}}, the same names in every sample); the others are counted in `skipped` (missing_labels when the
    labels are absent, not non-negative integers, or not the names of the first labelled sample)."""
    def build(shards):
        images, labels, skipped = _decode_shards(spec, shards, image_size, _labels)
        names = next((tuple(sorted(found)) for found in labels if found), None)
        usable = [n for n, found in enumerate(labels) if found and tuple(sorted(found)) == names]
        if len(usable) < len(labels):
            skipped["missing_labels"] = len(labels) - len(usable)
        if not usable:
            raise ValueError(f"no sample of {spec!r} has class labels (KEY.json \"labels\"); skipped: {skipped}")
        table = np.array([[labels[n][name] for name in names] for n in usable], dtype=np.int64)
        return LabelSet(images[usable], table, names, skipped)

    return _cached(spec, image_size, "labels", build)


def _cached(spec: str, image_size: int, kind: str, build):
    shards = expand_shards(spec)
    key = _files_key(shards, image_size)
    key = None if key is None else (kind, key)
    if key is not None and _last_loaded.get("key") == key:
        return _last_loaded["data"]
    data = build(shards)
    if key is not None:
        _last_loaded.update(key=key, data=data)
    return data


def _files_key(shards: list, image_size: int) -> tuple | None:
    """What identifies local shards' content (path, size, modification time), or None when any is remote."""
    if any("://" in shard.url for shard in shards):
        return None
    try:
        stats = [(shard.url, os.stat(shard.url)) for shard in shards]
    except OSError:
        return None
    return image_size, tuple((url, stat.st_size, stat.st_mtime_ns) for url, stat in stats)


def _decode_shards(spec: str, shards: list, image_size: int, target) -> tuple[np.ndarray, list, dict]:
    """(images, target(sample, web caption) per decoded sample, skipped counts by error type)."""
    images, targets, skipped = [], [], {}
    for shard in shards:
        samples = []
        for item in read_shard(shard.url):
            if not hasattr(item, "key"):  # a problem with the shard itself (truncated, not a tar)
                skipped[item.error_type] = skipped.get(item.error_type, 0) + 1
                continue
            samples.append(item)
            if len(samples) == CHUNK:
                _decode_into(shard.id, samples, image_size, target, images, targets, skipped)
                samples = []
        _decode_into(shard.id, samples, image_size, target, images, targets, skipped)
    if not targets:
        raise ValueError(f"no usable samples in {spec!r} (skipped: {skipped or 'no samples at all'})")
    return np.concatenate(images), targets, skipped


def _decode_into(shard_id: str, samples: list, image_size: int, target, images: list, targets: list,
                 skipped: dict) -> None:
    if not samples:
        return
    decoded = decode_samples(shard_id, samples, [image_size])
    for row in decoded.rows:
        if row["status"] != "ok":
            skipped[row["error_type"]] = skipped.get(row["error_type"], 0) + 1
    images.append(decoded.images[image_size])
    targets += [target(samples[position], caption) for position, caption in zip(decoded.ok, decoded.captions)]


def _texts(sample, caption: str | None) -> list[str]:
    """A web sample's texts: the captions capfilt's export kept, else the web caption ("" when it has none)."""
    return _kept_captions(sample.members.get("json")) or [caption or ""]


def _labels(sample, caption) -> dict[str, int] | None:
    """A labelled sample's {name: class index} from KEY.json, or None when absent or not non-negative integers."""
    try:
        found = json.loads(sample.members.get("json", b"").decode("utf-8", errors="replace")).get("labels")
    except (ValueError, AttributeError):
        return None
    if not isinstance(found, dict) or not found:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in found.values()):
        return None
    return found


def _kept_captions(meta: bytes | None) -> list[str]:
    """The captions capfilt's export kept for a sample (KEY.json "capfilt"), or [] for a raw web sample."""
    if not meta:
        return []
    try:
        value = json.loads(meta.decode("utf-8", errors="replace"))
    except ValueError:
        return []
    kept = value.get("capfilt", {}).get("captions", []) if isinstance(value, dict) else []
    return [c["text"] for c in kept if isinstance(c, dict) and isinstance(c.get("text"), str)]


def load_captions(annotations, images_dir, image_size: int) -> PairSet:
    """A COCO-Karpathy caption file (list of {"image", "caption"}) with its images."""
    records = read_coco_karpathy(annotations, str(images_dir))
    images = np.stack([resize(load_image(Path(r.image)), image_size) for r in records])
    return PairSet(images, [list(r.references) for r in records])


def load_questions(questions, annotations, images_dir, image_size: int) -> QuestionSet:
    """VQAv2-format questions with their ten answers each, and the images they ask about."""
    records = read_vqa(questions, annotations, image_dir=str(images_dir))
    cache: dict[str, np.ndarray] = {}
    for record in records:
        if record.image not in cache:
            cache[record.image] = resize(load_image(Path(record.image)), image_size)
    return QuestionSet(np.stack([cache[r.image] for r in records]), [r.question for r in records],
                       [list(r.answers) for r in records])


def _decoded(paths, image_size: int) -> dict[str, np.ndarray]:
    return {path: resize(load_image(Path(path)), image_size) for path in dict.fromkeys(paths)}


def load_nlvr(annotations, images_dir, image_size: int) -> ImagePairSet:
    """NLVR2 JSON lines with their image pairs."""
    records = read_nlvr2(annotations, str(images_dir))
    cache = _decoded([p for r in records for p in (r.left_image, r.right_image)], image_size)
    pairs = np.stack([np.stack([cache[r.left_image], cache[r.right_image]]) for r in records])
    return ImagePairSet(pairs, [r.sentence for r in records], np.array([int(r.label) for r in records]))


def load_boxes(refs, instances, images_dir, image_size: int, split: str = "train") -> BoxSet:
    """RefCOCO refs of `split` with their images and boxes (made fractions of the image's size, as the toolbox's
    grounding head learns them)."""
    records = read_refcoco(refs, instances, split, str(images_dir))
    cache = _decoded([r.image for r in records], image_size)
    sizes = {}
    for path in cache:
        with Image.open(path) as image:
            sizes[path] = image.size
    boxes = []
    for r in records:
        width, height = sizes[r.image]
        x, y, w, h = r.bbox
        boxes.append([x / width, y / height, (x + w) / width, (y + h) / height])
    return BoxSet(np.stack([cache[r.image] for r in records]), [list(r.sentences) for r in records],
                  np.clip(np.array(boxes, dtype=np.float32), 0, 1))


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> BLIP's normalised float (B, 3, S, S), as models.base.Role does for inference."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (batch - mean) / std
