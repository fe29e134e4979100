"""Ctrl-C during a real `python jobs/capfilt.py`: one line, no traceback, exit 130, and the same command resumes
(the shards committed before the interrupt are skipped, not redone)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.capfilt import INTERRUPTED
from tests.corpus import build_demo_shards
from tests.processes import descendants, kill_started

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 300
SHARDS = 12  # several seconds of work left after the first commit, even on a loaded machine


def committed(out: Path) -> dict[str, int]:
    """shard -> mtime of its Parquet, for every shard with a done-marker (either marker layout)."""
    shards = out / "shards"
    markers = [p.stem for p in (shards / "_done").glob("*.json")] + \
              [p.name.removesuffix(".done.json") for p in shards.glob("*.done.json")]
    return {m: (shards / f"{m}.parquet").stat().st_mtime_ns for m in markers}


def test_ctrl_c_prints_one_line_exits_130_and_the_same_command_resumes(tmp_path):
    inputs = tmp_path / "in"
    build_demo_shards(inputs, shards=SHARDS, per_shard=6)  # enough work left after the first commit to interrupt
    out = tmp_path / "out"
    cmd = [sys.executable, "jobs/capfilt.py", "--input", str(inputs), "--output", str(out), "--batch-size", "2",
           "--model-threads", "1", "--decode-workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A session of its own, signalled as a whole: what a terminal's Ctrl-C does to the foreground process group.
    job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.time() + JOB_TIMEOUT
        while not committed(out) and job.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert job.poll() is None, "the job ended before it could be interrupted"
        done = committed(out)
        assert done
        os.killpg(job.pid, signal.SIGINT)
        _, err = job.communicate(timeout=120)
    finally:
        started = descendants(job.pid)
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        kill_started(started)
    if job.returncode == 0 and len(committed(out)) == SHARDS:
        pytest.skip("the job finished before the signal reached it: nothing was interrupted")
    assert job.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines() == [INTERRUPTED], err[-2000:]
    if len(done) == SHARDS:  # every shard had been committed when the signal came: nothing left to resume
        return
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "already done" in rerun.stdout and "(0 already done)" not in rerun.stdout, rerun.stdout
    after = committed(out)
    assert sorted(after) == [f"{s:05d}" for s in range(SHARDS)]
    assert all(after[shard] == mtime for shard, mtime in done.items())  # committed before Ctrl-C: untouched
