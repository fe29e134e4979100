"""Web-like shards of group scenes: img2dataset-style tars with noisy captions, and the truth beside them."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.tars import sample_members, write_tar
from shapeworld.captions import canonical, corrupt, draw_noise, phrasings
from shapeworld.scenes import Scene, render, sample_scene

JPEG_QUALITY = 90
TRUTH_FILE = "truth.parquet"
TRUTH_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("noise", pa.string()),
                          ("caption", pa.string()), ("true_caption", pa.string()), ("shape", pa.string()),
                          ("color", pa.string()), ("count", pa.int64()), ("position", pa.string())])


def jpeg(scene: Scene, quality: int = JPEG_QUALITY) -> bytes:
    """The rendered scene as JPEG bytes (the same scene always gives the same bytes)."""
    buffer = io.BytesIO()
    render(scene).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def web_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """(noise kind or "clean", caption): a random correct phrasing, or a corruption drawn with NOISE_MIX."""
    noise = draw_noise(rng)
    if noise == "clean":
        options = phrasings(scene)
        return noise, options[rng.integers(len(options))]
    return noise, corrupt(scene, noise, rng)


def write_shard(path: Path, shard: int, count: int, rng: np.random.Generator, url_prefix: str) -> list[dict]:
    """One tar of `count` samples (keys: 5-digit shard + 4-digit index); returns its truth rows."""
    members: list[tuple[str, bytes]] = []
    rows = []
    for index in range(count):
        key = f"{shard:05d}{index:04d}"
        scene = sample_scene(rng)
        noise, caption = web_caption(scene, rng)
        image = jpeg(scene)
        members += sample_members(key, image, caption, f"{url_prefix}/{key}.jpg", size=(scene.size, scene.size)).items()
        rows.append({"shard": f"{shard:05d}", "key": key, "noise": noise, "caption": caption,
                     "true_caption": canonical(scene), "shape": scene.shape, "color": scene.color,
                     "count": scene.count, "position": scene.position})
    write_tar(path, members)
    return rows


def write_web(folder: Path, seed: int, stream: int, shards: int, per_shard: int) -> int:
    """`shards` tars of `per_shard` samples plus truth.parquet; shard s draws from default_rng([seed, stream, s])."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for shard in range(shards):
        rng = np.random.default_rng([seed, stream, shard])
        rows += write_shard(folder / f"{shard:05d}.tar", shard, per_shard, rng,
                            f"https://shapeworld.example/{folder.name}/{shard:05d}")
    pq.write_table(pa.Table.from_pylist(rows, schema=TRUTH_SCHEMA), folder / TRUTH_FILE)
    return len(rows)
