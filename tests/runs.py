"""Committed CapFilt runs written without models or Ray (rows with fixed scores, through the writer's own commit),
and the run-directory paths the tests look at, for the commit-point and export tests."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pipelines.assemble import shard_stats, shard_table
from pipelines.decode import new_row
from pipelines.tars import sample_members, write_tar
from pipelines.reader import read_shard
from pipelines.writer import RunDir
from schemas.capfilt import LEGACY_MARKER_SUFFIX, MARKER_DIR, RUN_FILE, SHARD_DIR
from tests.hostile import image_bytes


def write_source(path: Path, samples: int, seed: int = 0) -> Path:
    """An img2dataset-style tar of `samples` small PNGs (keys k00, k01, ...)."""
    members = {}
    for i in range(samples):
        members.update(sample_members(f"k{i:02d}", image_bytes("PNG", seed=seed * 100 + i), f"web caption {i}",
                                      f"https://x/{seed}/{i}", extension="png"))
    return write_tar(path, members)


def rows_for(shard_id: str, source: Path, itm: float) -> list[dict]:
    """One ok row per sample of `source`, every web and synthetic caption scored `itm`."""
    rows = []
    for i, sample in enumerate(read_shard(str(source))):
        row = new_row(shard_id, sample.key)
        row.update(url=f"https://x/{i}", web_caption=f"web caption {i}", web_itm=itm, web_itc=0.1,
                   synthetic=[{"text": f"synthetic {i}", "itm": itm, "itc": 0.2}],
                   image_embedding=[1.0, 0.0], width=40, height=30, image_format="png")
        rows.append(row)
    return rows


def commit(out: RunDir, shard_id: str, source: Path, itm: float) -> list[dict]:
    rows = rows_for(shard_id, source, itm)
    out.commit_shard(shard_id, shard_table(rows, 2), shard_stats(shard_id, str(source), rows, time.time()))
    return rows


def make_run(root: Path, shards: dict[str, tuple[int, float]]) -> tuple[Path, Path]:
    """Input folder root/inputs with one tar per shard id (id -> (samples, itm of every caption)), and the
    committed run root/run over it, with its run.json; returns (inputs, run)."""
    inputs, run = root / "inputs", root / "run"
    out = RunDir(str(run))
    for seed, (shard_id, (samples, itm)) in enumerate(shards.items()):
        commit(out, shard_id, write_source(inputs / f"{shard_id}.tar", samples, seed), itm)
    out.write_json(out.path(RUN_FILE), {"input": str(inputs), "shards": len(shards)})
    return inputs, run


def marker(run: Path, shard_id: str) -> Path:
    return run / SHARD_DIR / MARKER_DIR / f"{shard_id}.json"


def to_legacy_layout(run: Path) -> Path:
    """Move a run's markers where runs before issue 24 wrote them (shards/{shard}.done.json), and its Parquet
    files to their old names ({shard}.parquet, even for an id starting with '_')."""
    shards = run / SHARD_DIR
    for path in sorted((shards / MARKER_DIR).glob("*.json")):
        path.rename(shards / (path.stem + LEGACY_MARKER_SUFFIX))
    shutil.rmtree(shards / MARKER_DIR)
    for path in shards.glob("@*.parquet"):
        path.rename(shards / path.name[1:])
    return run


def files(directory: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file under `directory`."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
