"""Model actors that die mid-job: every sample is still accounted for exactly once, and a poison sample that kills
its actor every time becomes one error row instead of an endless retry loop."""
from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipelines.config import CapFiltConfig
from tests.corpus import jpeg_bytes, sample_members, write_tar
from pipelines.ray_runner import ModelActor

ray = pytest.importorskip("ray")


class PoisonActor(ModelActor):
    """Exits its process whenever a batch holds the sample keyed 'poison' (every time, as a bad input would)."""

    def __call__(self, batch):
        if any(batch.rows[i]["key"] == "poison" for i in batch.ok):
            os._exit(1)
        return super().__call__(batch)


class DiesOnceActor(ModelActor):
    """Exits its process on its first batch only (a marker file remembers across the restart)."""

    def __call__(self, batch):
        marker = Path(os.environ["CAPFILT_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return super().__call__(batch)


class FailsOnceActor(ModelActor):
    """Raises on the first batch that holds the sample keyed 'flaky', then works (the actor lives on)."""

    failed = False

    def __call__(self, batch):
        if not self.failed and any(batch.rows[i]["key"] == "flaky" for i in batch.ok):
            self.failed = True
            raise RuntimeError("injected: fails once")
        return super().__call__(batch)


class AlwaysFailsActor(ModelActor):
    """Raises whenever a call holds the sample keyed 'bad' (a persistent model failure, the actor lives on)."""

    def __call__(self, batch):
        if any(batch.rows[i]["key"] == "bad" for i in batch.ok):
            raise RuntimeError("injected: the model fails on this sample")
        return super().__call__(batch)


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


def run(paths, out, actor_class, logs: list | None = None, **settings):
    from pipelines.ray_runner import run_capfilt

    config = CapFiltConfig(input=" ".join(map(str, paths)), output=str(out), batch_size=4, model_threads=1,
                           precision="fp32", **settings)
    return run_capfilt(config, log=(lambda line: None) if logs is None else logs.append, actor_class=actor_class)


def marker(out: Path, shard_id: str) -> dict:
    return json.loads((out / "shards" / "_done" / f"{shard_id}.json").read_text())


def counts(**nonzero) -> dict:
    from schemas.capfilt import no_retries

    return {**no_retries(), **nonzero}


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


def test_clean_run_counts_no_retries(cluster, tmp_path):
    """Nothing fails: every retry count is zero in each done-marker and in the summary, and the lines stay short."""
    logs = []
    paths = [shard(tmp_path / "00000.tar", ["a", "b", "c", "d", "e"]), shard(tmp_path / "00001.tar", ["f"])]
    result = run(paths, tmp_path / "out", None, logs)
    assert marker(tmp_path / "out", "00000")["retries"] == marker(tmp_path / "out", "00001")["retries"] == counts()
    assert result["retries"] == counts() and result["errors"] == 0
    assert not any("retried" in line or "isolated" in line or "one at a time" in line for line in logs)


def test_retried_batch_is_counted(cluster, tmp_path):
    """A batch that fails once then succeeds: batches_retried=1 in its shard's marker, in the summary and in the
    lines; nothing isolated, every row ok; the other shard's marker is all zeros."""
    logs = []
    paths = [shard(tmp_path / "00000.tar", ["a", "b", "c", "d", "flaky", "f"]), shard(tmp_path / "00001.tar", ["g"])]
    result = run(paths, tmp_path / "out", FailsOnceActor, logs)
    assert set(status for _, _, status, _ in rows_of(tmp_path / "out")) == {"ok"}
    assert marker(tmp_path / "out", "00000")["retries"] == counts(batches_retried=1)
    assert marker(tmp_path / "out", "00001")["retries"] == counts()
    assert result["retries"] == counts(batches_retried=1) and result["errors"] == 0
    assert any(line.startswith("[") and "00000: 6 samples, 6 ok, 1 batch retried |" in line for line in logs)
    assert "1 batch retried)" in logs[-1] and "capfilt done" in logs[-1]
    assert not any("one at a time" in line for line in logs)


def test_isolated_batch_is_counted_and_logged(cluster, tmp_path, monkeypatch):
    """A batch that fails on every try: retried once, then split into its 4 samples run alone; the one that fails
    alone is retried once and becomes a model_failed row. The marker, the summary, the progress and summary lines
    show it, and one line names the shard, the batch and the reason."""
    import pipelines.ray_runner as runner

    monkeypatch.setattr(runner, "PROGRESS_EVERY", 0.0)
    logs = []
    paths = [shard(tmp_path / "00000.tar", ["a", "b", "bad", "d", "e", "f"])]
    result = run(paths, tmp_path / "out", AlwaysFailsActor, logs)
    statuses = {k: (status, error) for _, k, status, error in rows_of(tmp_path / "out")}
    assert statuses.pop("bad") == ("error", "model_failed") and set(statuses.values()) == {("ok", None)}
    expected = counts(batches_retried=1, batches_isolated=1, samples_isolated=4, samples_retried=1)
    assert marker(tmp_path / "out", "00000")["retries"] == expected
    assert result["retries"] == expected and result["errors"] == 1
    split = [line for line in logs if "one at a time" in line]
    assert len(split) == 1
    assert split[0].startswith("00000: batch 0 (samples a..d) failed 2 times")
    assert split[0].endswith("RuntimeError: injected: the model fails on this sample")
    shown = "1 batch retried, 1 isolated (4 samples alone, 1 retried)"
    assert any(" open, " in line and line.endswith(shown) for line in logs)  # a progress line while it runs
    assert any(line.startswith("[1/1 shards] 00000: 6 samples, 5 ok, " + shown + " |") for line in logs)
    assert f"1 errors, {shown})" in logs[-1]
