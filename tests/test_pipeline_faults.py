"""Model actors that die mid-job: every sample is still accounted for exactly once, and a poison sample that kills
its actor every time becomes one error row instead of an endless retry loop."""
from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipelines.config import CapFiltConfig
from pipelines.demo_data import jpeg_bytes, sample_members, write_tar
from pipelines.ray_runner import ModelActor

ray = pytest.importorskip("ray")


class PoisonActor(ModelActor):
    """Exits its process whenever a batch holds the sample keyed 'poison' (every time, as a bad input would)."""

    def process(self, batch, subset=None, with_errors=None):
        picked = range(len(batch["ok"])) if subset is None else subset
        if any(batch["rows"][batch["ok"][p]]["key"] == "poison" for p in picked):
            os._exit(1)
        return super().process(batch, subset, with_errors)


class DiesOnceActor(ModelActor):
    """Exits its process on its first batch only (a marker file remembers across the restart)."""

    def process(self, batch, subset=None, with_errors=None):
        marker = Path(os.environ["CAPFILT_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return super().process(batch, subset, with_errors)


@pytest.fixture(scope="module")
def cluster():
    from pipelines.ray_runner import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def shard(path: Path, keys: list[str]) -> Path:
    members = {}
    for i, key in enumerate(keys):
        image = jpeg_bytes(np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8))
        members.update(sample_members(key, image, f"caption {key}", f"u/{key}"))
    return write_tar(path, members)


def rows_of(out: Path) -> list[tuple]:
    return duckdb.sql(f"SELECT shard, key, status, error_type FROM read_parquet('{out}/shards/*.parquet') "
                      "ORDER BY shard, key").fetchall()


def run(paths, out, actor_class, **settings):
    from pipelines.ray_runner import run_capfilt

    config = CapFiltConfig(input=" ".join(map(str, paths)), output=str(out), batch_size=4, model_threads=1,
                           precision="fp32", **settings)
    return run_capfilt(config, log=lambda line: None, actor_class=actor_class)


def test_poison_sample_becomes_one_error_row(cluster, tmp_path):
    """A sample that kills the actor every time: the job finishes, that sample is a worker_crashed row, the others
    of its batch and shard are ok, and nothing is lost or duplicated."""
    keys = ["a", "b", "poison", "d", "e", "f"]
    paths = [shard(tmp_path / "00000.tar", keys), shard(tmp_path / "00001.tar", ["g", "h"])]
    result = run(paths, tmp_path / "out", PoisonActor)
    rows = rows_of(tmp_path / "out")
    assert [(s, k) for s, k, _, _ in rows] == [("00000", k) for k in sorted(keys)] + [("00001", "g"), ("00001", "h")]
    statuses = {k: (status, error) for _, k, status, error in rows}
    assert statuses.pop("poison") == ("error", "worker_crashed")
    assert set(statuses.values()) == {("ok", None)}
    assert result["samples"] == 8 and result["errors"] == 1


def test_actor_killed_mid_shard_loses_nothing(cluster, tmp_path, monkeypatch):
    """An actor that dies once mid-shard is restarted; its batch is retried; rows = inputs, all ok, no duplicates."""
    monkeypatch.setenv("CAPFILT_TEST_MARKER", str(tmp_path / "died"))
    ray.shutdown()  # the marker's path must reach the actors' environment: start a fresh instance with it
    from pipelines.ray_runner import connect

    connect(num_cpus=2)
    keys = [f"k{i}" for i in range(10)]
    paths = [shard(tmp_path / "00000.tar", keys)]
    run(paths, tmp_path / "out", DiesOnceActor)
    assert (tmp_path / "died").exists()
    assert rows_of(tmp_path / "out") == [("00000", k, "ok", None) for k in sorted(keys)]
