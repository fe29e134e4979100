"""Test corpora: img2dataset-style shards of the photographs scikit-image ships, with web-like captions."""
from __future__ import annotations

from pathlib import Path

from evaluation.fixtures import PHOTOS, photo
from pipelines.tars import jpeg_bytes, sample_members, write_tar

__all__ = ["PHOTOS", "build_demo_shards", "jpeg_bytes", "photo", "sample_members", "write_tar"]


def build_demo_shards(directory: Path, shards: int = 3, per_shard: int = 8, broken: bool = True) -> list[Path]:
    """Shards of real photographs with web-like captions: correct ones, unrelated ones, a missing one, and
    (with `broken`) a truncated JPEG and a sample without an image, so the demo shows error rows too."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    images = {name: photo(name) for name, _, _ in PHOTOS}
    for s in range(shards):
        members: dict[str, bytes] = {}
        for i in range(per_shard):
            index = s * per_shard + i
            name, good, bad = PHOTOS[index % len(PHOTOS)]
            key = f"{s:05d}{i:04d}"
            array = images[name]
            caption = None if index % 11 == 7 else (bad if index % 3 == 2 else good)
            data = jpeg_bytes(array)
            if broken and s == 0 and i == per_shard - 1:
                data = data[: len(data) // 3]  # cut short: an error row 'truncated_image'
            if broken and s == shards - 1 and i == per_shard - 1:
                data = None  # no image member: an error row 'missing_image'
            size = (array.shape[1], array.shape[0])
            members.update(sample_members(key, data, caption, f"https://example.com/{name}/{index}.jpg", size=size))
        paths.append(write_tar(directory / f"{s:05d}.tar", members))
    return paths
