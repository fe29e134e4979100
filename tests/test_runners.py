"""The two runners over the same reader, stage, ledger and writer: run_local and the Ray runner write the same
Parquet bytes; the Ray runner checks every model actor's load before any work, and refuses more actors than GPUs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.sampling_config import Sampling
from pipelines.config import CapFiltConfig
from tests.corpus import build_demo_shards
from pipelines.ray_runner import ModelActor
from pipelines.writer import RunDir

ray = pytest.importorskip("ray")


class SecondLoadFails(ModelActor):
    """Every actor but the first to start fails to load its models, as a node with a broken disk would."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            os.close(os.open(os.environ["CAPFILT_TEST_MARKER"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            self.load_error = "injected: this node's copy of the weights is unreadable"


@pytest.fixture
def local_ray():
    ray.shutdown()
    from pipelines.ray_runner import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def config(shards, out, **settings) -> CapFiltConfig:
    return CapFiltConfig(input=" ".join(map(str, shards)), output=str(out), batch_size=3, **settings)


def parquet_bytes(out: Path) -> dict[str, bytes]:
    run = RunDir(str(out))
    return {shard: Path(run.parquet_path(shard)).read_bytes() for shard in sorted(run.done_shards())}


def test_run_local_and_the_ray_runner_write_identical_parquet(local_ray, tmp_path):
    """Same input, seed and settings: byte-identical Parquet, with broken samples and a batch size that splits the
    shards unevenly."""
    from pipelines.local_runner import run_local
    from pipelines.ray_runner import run_capfilt

    shards = build_demo_shards(tmp_path / "in", shards=2, per_shard=5)
    events = []
    sampling = Sampling(seed=7, num_captions=2)
    local = run_local(config(shards, tmp_path / "local", sampling=sampling), log=None, on_event=events.append)
    on_ray = run_capfilt(config(shards, tmp_path / "ray", sampling=sampling), log=lambda line: None)
    assert local["samples"] == on_ray["samples"] == 10 and local["ok"] == on_ray["ok"]
    assert [e["event"] for e in events] == ["start", "shard", "shard", "summary"]
    local_files, ray_files = parquet_bytes(tmp_path / "local"), parquet_bytes(tmp_path / "ray")
    assert len(local_files) == 2 and local_files == ray_files


def test_every_actor_load_is_checked_before_any_batch(tmp_path, monkeypatch):
    """With two model actors, one of which cannot load: the job stops with that actor's reason before any work is
    sent, and nothing is committed (before, only actor 0 was asked, and the other's samples could end as
    model_failed rows in committed shards)."""
    from models.names import ModelLoadError
    from pipelines.ray_runner import run_capfilt

    from pipelines.ray_runner import connect

    monkeypatch.setenv("CAPFILT_TEST_MARKER", str(tmp_path / "first-load"))  # before Ray starts: workers inherit it
    ray.shutdown()
    connect(num_cpus=2)
    try:
        shards = build_demo_shards(tmp_path / "in", shards=2, per_shard=3)
        with pytest.raises(ModelLoadError, match=r"model actor \d could not load its models: injected"):
            run_capfilt(config(shards, tmp_path / "out", actors=2, model_threads=1), log=lambda line: None,
                        actor_class=SecondLoadFails)
        assert RunDir(str(tmp_path / "out")).done_shards() == set()
    finally:
        ray.shutdown()


def test_more_actors_than_gpus_is_refused_before_any_actor_starts(tmp_path):
    """On a cluster with 2 GPUs (a fake GPU resource), --actors 3 is one line, not a job that hangs on an actor
    that can never be placed."""
    from pipelines.ray_runner import run_capfilt

    ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        shards = build_demo_shards(tmp_path / "in", shards=1, per_shard=2)
        with pytest.raises(ValueError, match=r"--actors 3: the cluster has 2 GPU\(s\) and each model actor takes one"):
            run_capfilt(config(shards, tmp_path / "out", actors=3), log=lambda line: None)
        assert not ray.util.list_named_actors() and ray.available_resources().get("GPU") == 2
    finally:
        ray.shutdown()


def test_a_resume_over_a_changed_input_tar_is_refused_naming_it(tmp_path):
    """A re-run that would resume over a finished shard whose tar changed since (here: rewritten with one sample
    fewer) is an error naming the tar, and the committed shard is left as it was."""
    from pipelines.fingerprint import InputChangedError
    from pipelines.local_runner import run_local

    shards = build_demo_shards(tmp_path / "in", shards=2, per_shard=3)
    out = tmp_path / "out"
    run_local(config(shards, out), log=None)
    before = parquet_bytes(out)
    smaller = build_demo_shards(tmp_path / "other", shards=2, per_shard=2)
    shards[0].write_bytes(smaller[0].read_bytes())
    with pytest.raises(InputChangedError, match=str(shards[0].name)):
        run_local(config(shards, out), log=None)
    assert parquet_bytes(out) == before
