"""What the task runners share: their result, batching, and image decoding ahead of the model actors."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from models.images import load_image, resize

DECODE_THREADS = 4  # Pillow releases the GIL while decoding and resizing, so threads overlap


@dataclass
class Outcome:
    metrics: dict[str, float]  # metric -> value in percent points (the papers' scale)
    samples: int  # images (caption, retrieval) or questions (VQA) scored
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why it could not run here (never a 0)
    predictions: list | None = None  # in the benchmark's official results format, when it has one
    note: str = ""


def chunks(items: Sequence, size: int) -> list:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _prepare(path: str, size: int) -> np.ndarray:
    return resize(load_image(path), size)


def image_batches(groups: Iterable[Sequence[str]], size: int) -> Iterator[np.ndarray]:
    """One uint8 batch (B, size, size, 3) per group of image paths, decoded when the consumer asks for it."""
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for paths in groups:
            yield np.stack(list(pool.map(_prepare, paths, [size] * len(paths))))
