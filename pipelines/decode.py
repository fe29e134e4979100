"""CPU-side preparation of a batch: metadata and captions parsed, images decoded and resized for the models.

Each raw sample becomes a row dict (the non-model columns of the schema); the samples that decode get their
pixels in `images`, at every input size the models need. Runs on CPU workers, never on a model actor.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.images import DEFAULT_MAX_PIXELS, ImageError, decode_image, resize
from pipelines.reader import IMAGE_EXTENSIONS, RawSample
from schemas.capfilt import STATUS_ERROR, STATUS_OK


def new_row(shard: str, key: str | None) -> dict:
    return {"shard": shard, "key": key, "status": STATUS_OK, "error_type": None, "error_message": None,
            "web_caption_invalid_utf8": False}


def error_row(shard: str, key: str | None, error_type: str, message: str) -> dict:
    row = new_row(shard, key)
    row.update(status=STATUS_ERROR, error_type=error_type, error_message=message[:2000])
    return row


def undecoded_row(shard: str, sample: RawSample, error_type: str, message: str) -> dict:
    """The error row of a sample whose image is not decoded: its metadata and caption are still read."""
    row = new_row(shard, sample.key)
    _read_metadata(row, sample.members)
    _fail(row, error_type, message)
    return row


@dataclass
class DecodedBatch:
    """Samples of one shard, ready for the models: every sample's row (metadata, status), and for the samples that
    decoded (`ok`, positions in `rows`) their pixels at each model input size and their web caption."""

    rows: list[dict]
    ok: list[int]
    images: dict[int, np.ndarray]  # size -> uint8 (len(ok), S, S, 3)
    captions: list[str | None]  # per decoded sample; None when it has no web caption
    positions: list[int] | None = None  # each row's position in the batch it was taken from (default: its own)

    def __post_init__(self):
        if self.positions is None:
            self.positions = list(range(len(self.rows)))

    def take(self, picks: Sequence[int]) -> DecodedBatch:
        """The decoded samples `picks` (indices into `ok`) alone, as a batch that remembers their positions."""
        picks = list(picks)
        return DecodedBatch(rows=[self.rows[self.ok[p]] for p in picks], ok=list(range(len(picks))),
                            images={size: array[picks] for size, array in self.images.items()},
                            captions=[self.captions[p] for p in picks],
                            positions=[self.positions[self.ok[p]] for p in picks])

    def outline(self) -> DecodedBatch:
        """The batch without its pixels: what the driver needs to report each sample on its own."""
        return DecodedBatch(self.rows, self.ok, {size: array[:0] for size, array in self.images.items()},
                            self.captions, self.positions)


def decode_samples(shard: str, samples: Sequence[RawSample], sizes: Sequence[int],
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedBatch:
    """One row per sample; pixels and the web caption for each sample whose image decodes."""
    rows, ok, captions = [], [], []
    pixels: dict[int, list[np.ndarray]] = {size: [] for size in sizes}
    for sample in samples:
        row = new_row(shard, sample.key)
        _read_metadata(row, sample.members)
        rows.append(row)
        if sample.problem is not None:
            _fail(row, *sample.problem)
            continue
        extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample.members), None)
        if extension is None:
            _fail(row, "missing_image", "the sample has no image member (jpg, png, webp, ...)")
            continue
        row["image_format"] = extension
        try:
            image = decode_image(sample.members[extension], max_pixels)
        except ImageError as exc:
            _fail(row, exc.error_type, str(exc))
            continue
        row["width"], row["height"] = image.size
        for size in sizes:
            pixels[size].append(resize(image, size))
        ok.append(len(rows) - 1)
        caption = row.get("web_caption")
        captions.append(caption if caption and caption.strip() else None)
    images = {size: (np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8))
              for size, arrays in pixels.items()}
    return DecodedBatch(rows, ok, images, captions)


def _fail(row: dict, error_type: str, message: str) -> None:
    row.update(status=STATUS_ERROR, error_type=error_type, error_message=message[:2000])


def _read_metadata(row: dict, members: dict[str, bytes]) -> None:
    """img2dataset's KEY.json fields and the KEY.txt caption; undecodable text is kept with replacement chars."""
    meta: dict = {}
    if "json" in members:
        text, _ = _text(members["json"])
        row["metadata"] = text
        try:
            parsed = json.loads(text)
            meta = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            meta = {}
    if "txt" in members:
        caption, invalid = _text(members["txt"])
    elif isinstance(meta.get("caption"), str):
        caption, invalid = meta["caption"], False
    else:
        caption, invalid = None, False
    row["web_caption"] = caption
    row["web_caption_invalid_utf8"] = invalid
    row["url"] = meta.get("url") if isinstance(meta.get("url"), str) else None
    row["sha256"] = meta.get("sha256") if isinstance(meta.get("sha256"), str) else None
    for name in ("original_width", "original_height"):
        value = meta.get(name)
        row[name] = value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def _text(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True
