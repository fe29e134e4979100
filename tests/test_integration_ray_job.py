"""Integration: `ray job submit --working-dir` of jobs/capfilt.py to a real `ray start --head` cluster on 127.0.0.1.

The head is started with `ray start --block` in its own session and stopped by signalling only the processes it
started: `ray stop --force` would kill every Ray process on the machine, including other test runs' clusters.
It gets a private --temp-dir, so no stale /tmp/ray/ray_current_cluster is left for a later `ray.init()`.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest

from tests.corpus import build_demo_shards
from tests.processes import descendants, kill_started

# ---------------------------------------------------------------------------------------------------- helpers
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
SHARDS, PER_SHARD = 2, 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_env() -> dict:
    """Environment of the head and the CLI: no RAY_ADDRESS from outside, every server on loopback, token auth
    with a token of this test only, immediate shutdown on SIGTERM, and the venv's `python` first on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # node IP = 127.0.0.1 (else Ray resolves it to the public IP)
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # `ray start --block` tears down at once on SIGTERM
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


@contextlib.contextmanager
def running_head(env: dict):
    """A `ray start --head` cluster run with `env`, its dashboard on 127.0.0.1; yields (dashboard url, gcs port,
    the head's log: what `ray start` printed)."""
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    gcs, dashboard = free_port(), free_port()
    command = [str(RAY), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log_path = Path(temp_dir) / "head.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{dashboard}"
        while True:
            assert head.poll() is None, "ray start exited:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "ray start did not come up:\n" + log_path.read_text()[-3000:]
            if "Ray runtime started" in log_path.read_text():
                try:
                    urllib.request.urlopen(url + "/api/version", timeout=2).close()
                    break
                except urllib.error.HTTPError:  # 401 without the token: the dashboard is up
                    break
                except OSError:
                    pass
            time.sleep(0.3)
        yield url, gcs, log_path
    finally:
        started = descendants(head.pid)  # before the stop: orphans can no longer be traced to the head
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        kill_started(started)  # Ray workers run in sessions of their own, outside the head's process group
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head():
    """The head with this test's token forced (ray_env); yields (dashboard url, gcs port, env)."""
    env = ray_env()
    with running_head(env) as (url, gcs, _):
        yield url, gcs, env


def capfilt_submit(url: str, inputs: Path, out: Path) -> list[str]:
    """`ray job submit` of jobs/capfilt.py on the shards in `inputs`, writing to `out`."""
    excludes = {"excludes": [".venv", "demo-out", ".git", ".pytest_cache", "out", "*.egg-info"]}
    return [str(RAY), "job", "submit", "--address", url, "--working-dir", str(REPO), "--runtime-env-json",
            json.dumps(excludes), "--log-style", "record", "--", "python", "jobs/capfilt.py", "--input",
            str(inputs.resolve()), "--output", str(out.resolve())]


def check_output(out: Path) -> None:
    """The run of build_demo_shards(shards=SHARDS, per_shard=PER_SHARD) in `out`: one row per input sample."""
    assert (out / "run.json").exists()
    assert sorted(p.name for p in (out / "shards" / "_done").glob("*.json")) == ["00000.json", "00001.json"]
    con = duckdb.connect()
    rows = con.execute("SELECT shard, key, status, error_type, len(synthetic) FROM read_parquet(?) ORDER BY ALL",
                       [str(out / "shards" / "*.parquet")]).fetchall()
    con.close()
    expected = [(f"{s:05d}", f"{s:05d}{i:04d}") for s in range(SHARDS) for i in range(PER_SHARD)]
    assert [(shard, key) for shard, key, *_ in rows] == expected  # each sample exactly once
    errors = {(shard, key): kind for shard, key, status, kind, _ in rows if status != "ok"}
    # build_demo_shards truncates the last JPEG of the first shard and drops the last image of the last shard.
    assert errors == {("00000", "000000003"): "truncated_image", ("00001", "000010003"): "missing_image"}
    assert all(n == 1 for _, _, status, _, n in rows if status == "ok")


# ------------------------------------------------------------------------------------------------------ tests
def test_ray_job_submit_runs_capfilt_on_the_cluster(ray_head, tmp_path):
    """The submitted job joins the cluster named by RAY_ADDRESS, succeeds, and writes one row per input sample."""
    url, gcs, env = ray_head
    inputs = tmp_path / "shards"
    build_demo_shards(inputs, shards=SHARDS, per_shard=PER_SHARD)
    out = tmp_path / "out"
    submit = subprocess.run(capfilt_submit(url, inputs, out), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=150)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout
    assert f"127.0.0.1:{gcs}" in submit.stdout  # the driver joined this cluster, not an embedded instance
    assert f"capfilt done: {SHARDS}/{SHARDS} shards, {SHARDS * PER_SHARD} samples" in submit.stdout
    check_output(out)
