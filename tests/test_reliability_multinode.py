"""Multi-node: the node that holds the model actor dies mid-job (a `ray.cluster_utils.Cluster` of three nodes on
this machine); the actor and the decode tasks come back on another node and every sample is accounted exactly once."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.config import CapFiltConfig
from tests.corpus import build_demo_shards
from pipelines.ray_runner import ModelActor, run_capfilt

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

REPO = str(Path(__file__).resolve().parents[1])
SHARDS, PER_SHARD = 10, 8
TIMEOUT = 600.0
BATCH_SECONDS = 0.3


class WhereActor(ModelActor):
    """Appends its node id and process id to $CAPFILT_TEST_NODES for every batch it scores: where the actor ran, and
    reran."""

    def __call__(self, batch):
        with open(os.environ["CAPFILT_TEST_NODES"], "a") as handle:
            handle.write(f"{ray.get_runtime_context().get_node_id()} {os.getpid()}\n")
        # The tiny models score a batch in milliseconds: once, every shard was committed before the test could
        # remove the node after the first commit. A batch now takes at least this long (20 batches in the job).
        time.sleep(BATCH_SECONDS)
        return super().__call__(batch)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_node_of_the_model_actor_dies_mid_job(tmp_path, monkeypatch):
    """Head (GCS and driver, no CPUs) + node A (the only CPUs when the actor is placed, so the actor lands there).
    Node B joins once the actor is up; node A is killed after the first commit. The job ends normally, every input
    sample is one row, no sample is an error beyond the corpus's own two, and the actor ran on A then on B."""
    nodes_file = tmp_path / "nodes"
    # Processes of the nodes started here inherit this environment: workers import pipelines/ and tests/ from it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CAPFILT_TEST_NODES", str(nodes_file))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    build_demo_shards(tmp_path / "shards", shards=SHARDS, per_shard=PER_SHARD)
    out = tmp_path / "out"
    logs: list[str] = []
    result: dict = {}

    def job():
        config = CapFiltConfig(input=str(tmp_path / "shards"), output=str(out), batch_size=4, model_threads=1,
                               precision="fp32")
        try:
            result["summary"] = run_capfilt(config, log=logs.append, actor_class=WhereActor)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        node_a = cluster.add_node(num_cpus=2)
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # connect() joins it, as on a real cluster
        runner = threading.Thread(target=job, daemon=True)
        runner.start()
        wait_for(lambda: any(line.startswith("capfilt: ") for line in logs) or result, "the model actor")
        node_b = cluster.add_node(num_cpus=2)
        wait_for(lambda: list((out / "shards" / "_done").glob("*.json")) or result, "the first commit")
        committed_before = len(list((out / "shards" / "_done").glob("*.json")))
        cluster.remove_node(node_a, allow_graceful=False)
        # A machine that dies takes all of its processes with it; the raylet's workers here would live on for a moment
        # and could go on serving the calls already sent to them (seen in CI), so the actor's process goes too.
        for line in nodes_file.read_text().splitlines():
            node, pid = line.split()
            if node == node_a.node_id:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        runner.join(TIMEOUT)
        assert not runner.is_alive(), "the job did not finish after the node died"
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert "error" not in result, result.get("error")
    assert 1 <= committed_before < SHARDS, f"the node died after {committed_before} of {SHARDS} commits"
    assert result["summary"]["committed"] == SHARDS and result["summary"]["samples"] == SHARDS * PER_SHARD
    rows = duckdb.execute("SELECT shard, key, status, error_type FROM read_parquet(?)",
                          [str(out / "shards" / "*.parquet")]).fetchall()
    assert len(rows) == SHARDS * PER_SHARD
    assert len({(shard, key) for shard, key, _, _ in rows}) == len(rows)
    assert sorted(error for _, _, status, error in rows if status != "ok") == ["missing_image", "truncated_image"]
    ran_on = [line.split()[0] for line in nodes_file.read_text().splitlines()]
    assert ran_on[0] == node_a.node_id and ran_on[-1] == node_b.node_id and set(ran_on) == {node_a.node_id,
                                                                                            node_b.node_id}
    assert any("is back after a crash" in line for line in logs)
