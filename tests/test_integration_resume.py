"""Integration: a real `python jobs/capfilt.py` killed mid-run resumes without loss, duplication or rewrites;
re-runs are idempotent; a run made with other settings is refused unless --overwrite."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.corpus import build_demo_shards
from pipelines.export import export_dataset
from pipelines.select import keep_list, open_run, summary
from tests.processes import descendants, kill_started
from tests.runs import to_legacy_layout

# ---------------------------------------------------------------------------------------------------- helpers
REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "capfilt.py"
SHARDS, PER_SHARD, BATCH = 6, 12, 4
# One torch thread: on 2 cores the default (all cores for the model actor, beside a decode task) runs the tiny
# models 3-5x slower from OpenMP threads spinning against each other.
COMMON = ("--batch-size", str(BATCH), "--model-threads", "1")
JOB_TIMEOUT = 300


def job_env() -> dict:
    """The test's environment without RAY_ADDRESS: every job starts its own private embedded Ray."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def job_cmd(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(JOB), "--input", str(inputs), "--output", str(out), *COMMON, *extra]


def run_job(inputs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(job_cmd(inputs, out, *extra), cwd=REPO, env=job_env(), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the job's process group and every descendant (Ray workers start their own sessions)."""
    started = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    kill_started(started)
    proc.wait(timeout=30)


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mtime_ns, bytes) of every file under `directory`."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def visible_files(out: Path) -> set[str]:
    """Names of the files a reader of OUT/shards/*.parquet sees (every one must read as complete Parquet)."""
    con = duckdb.connect()
    names = {Path(row[0]).name for row in con.execute(
        "SELECT DISTINCT filename FROM read_parquet(?, filename = true)", [str(out / "shards" / "*.parquet")]
    ).fetchall()}
    con.close()
    return names


def read_rows(out: Path) -> list[dict]:
    """The run's rows, sorted by (shard, key), read the way a curator does (DuckDB over the glob)."""
    con = duckdb.connect()
    result = con.execute(
        "SELECT shard, key, status, error_type, web_caption, web_itm, web_itc, synthetic, image_embedding "
        "FROM read_parquet(?) ORDER BY shard, key", [str(out / "shards" / "*.parquet")])
    columns = [d[0] for d in result.description]
    rows = [dict(zip(columns, values)) for values in result.fetchall()]
    con.close()
    return rows


def close(a, b, tol: float = 1e-5) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


def assert_same_table(got: list[dict], want: list[dict]) -> None:
    """Same keys, statuses and synthetic texts; scores and embeddings within 1e-5."""
    assert [(r["shard"], r["key"]) for r in got] == [(r["shard"], r["key"]) for r in want]
    for g, w in zip(got, want):
        where = f"{g['shard']}/{g['key']}"
        for column in ("status", "error_type", "web_caption"):
            assert g[column] == w[column], (where, column)
        assert close(g["web_itm"], w["web_itm"]) and close(g["web_itc"], w["web_itc"]), where
        assert [s["text"] for s in g["synthetic"] or []] == [s["text"] for s in w["synthetic"] or []], where
        for gs, ws in zip(g["synthetic"] or [], w["synthetic"] or []):
            assert close(gs["itm"], ws["itm"]) and close(gs["itc"], ws["itc"]), where
        if w["image_embedding"] is None:
            assert g["image_embedding"] is None, where
        else:
            assert max(abs(x - y) for x, y in zip(g["image_embedding"], w["image_embedding"])) <= 1e-5, where


def assert_complete(out: Path, rows: list[dict]) -> None:
    """Every shard committed, one row per input sample, each (shard, key) exactly once."""
    ids = [f"{s:05d}" for s in range(SHARDS)]
    assert sorted(p.name for p in (out / "shards" / "_done").glob("*.json")) == [f"{i}.json" for i in ids]
    assert visible_files(out) == {f"{i}.parquet" for i in ids}
    assert len(rows) == SHARDS * PER_SHARD
    assert len({(r["shard"], r["key"]) for r in rows}) == len(rows)
    assert all(r["key"] is not None for r in rows)
    assert {r["shard"] for r in rows} == set(ids)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    build_demo_shards(directory, shards=SHARDS, per_shard=PER_SHARD)
    return directory


@pytest.fixture(scope="module")
def clean_run(inputs, tmp_path_factory) -> Path:
    """The reference: the same command run once, uninterrupted."""
    out = tmp_path_factory.mktemp("clean") / "out"
    result = run_job(inputs, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------------------------------ tests
def test_killed_run_resumes_without_rewrites_loss_or_duplicates(inputs, clean_run, tmp_path):
    """SIGKILL mid-run, re-run: committed shards untouched, the rest done once, table equal to a clean run."""
    out = tmp_path / "out"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(job_cmd(inputs, out), cwd=REPO, env=job_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + JOB_TIMEOUT
            while not list((out / "shards" / "_done").glob("*.json")):
                assert proc.poll() is None, "the job ended before its first shard was committed"
                assert time.monotonic() < deadline, "no shard committed in time"
                time.sleep(0.02)
        finally:
            kill_tree(proc)
    killed_markers = sorted(p.name for p in (out / "shards" / "_done").glob("*.json"))
    assert 1 <= len(killed_markers) < SHARDS, f"the kill did not land mid-run: {killed_markers}"

    # After the crash, everything a reader sees is complete Parquet (no partial file behind the glob).
    for name in visible_files(out):
        assert pq.read_table(out / "shards" / name).num_rows == PER_SHARD
    committed = {}
    for marker in killed_markers:
        shard = marker[: -len(".json")]
        for name in (f"{shard}.parquet", f"_done/{marker}"):
            path = out / "shards" / name
            committed[name] = (path.stat().st_mtime_ns, path.read_bytes())

    result = run_job(inputs, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{SHARDS} shards ({len(killed_markers)} already done)" in result.stdout

    for name, (mtime_ns, data) in committed.items():
        path = out / "shards" / name
        assert path.stat().st_mtime_ns == mtime_ns, f"{name} was rewritten by the resumed run"
        assert path.read_bytes() == data, f"{name} changed in the resumed run"
    rows = read_rows(out)
    assert_complete(out, rows)
    assert_same_table(rows, read_rows(clean_run))


def test_rerun_of_finished_run_changes_nothing(inputs, clean_run):
    """Re-running a finished run exits 0, skips every shard and rewrites no file."""
    before = snapshot(clean_run)
    result = run_job(inputs, clean_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{SHARDS} shards ({SHARDS} already done)" in result.stdout
    after = snapshot(clean_run)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], f"{name} was rewritten by an idempotent re-run"


def test_other_seed_is_refused_then_overwrites(inputs, clean_run, tmp_path):
    """Another --seed is refused (exit 2, one 'error:' line naming seed and --overwrite); --overwrite re-captions."""
    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    before = snapshot(out)

    refused = run_job(inputs, out, "--seed", "7")
    assert refused.returncode == 2, (refused.stdout[-2000:], refused.stderr[-3000:])
    assert "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused.stderr
    assert "seed" in errors[0] and "--overwrite" in errors[0]
    assert snapshot(out) == before, "a refused run modified the output"

    replaced = run_job(inputs, out, "--seed", "7", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["sampling"]["seed"] == 7
    rows, reference = read_rows(out), read_rows(clean_run)
    assert_complete(out, rows)
    assert [(r["shard"], r["key"], r["status"]) for r in rows] == [(r["shard"], r["key"], r["status"]) for r in reference]
    ok = [(r, w) for r, w in zip(rows, reference) if r["status"] == "ok"]
    assert len(ok) == SHARDS * PER_SHARD - 2  # the demo corpus has one truncated and one missing image
    changed = sum(r["synthetic"][0]["text"] != w["synthetic"][0]["text"] for r, w in ok)
    assert changed == len(ok), f"only {changed}/{len(ok)} synthetic captions changed with the seed"
    # the web caption's scores do not depend on the seed
    assert all(close(r["web_itm"], w["web_itm"]) and close(r["web_itc"], w["web_itc"]) for r, w in ok)


def test_parquet_without_its_marker_is_redone_by_the_rerun(inputs, clean_run, tmp_path):
    """The crash window between a shard's rename and its marker (issue 24): the Parquet file is there, the marker is
    not. The shard is outside the run for summary and export, and the same command redoes it, once."""
    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    (out / "shards" / "_done" / "00003.json").unlink()
    counts = summary(open_run(str(out)))
    assert (counts["shards"], counts["samples"]) == (SHARDS - 1, (SHARDS - 1) * PER_SHARD)
    assert "00003" not in {r["shard"] for r in keep_list(open_run(str(out)), 0.0).to_pylist()}
    before = snapshot(out)

    result = run_job(inputs, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{SHARDS} shards ({SHARDS - 1} already done)" in result.stdout
    after = snapshot(out)
    redone = {"shards/00003.parquet", "shards/_done/00003.json"}
    assert {name for name in after if after[name] != before.get(name)} == redone
    rows = read_rows(out)
    assert_complete(out, rows)
    assert_same_table(rows, read_rows(clean_run))


def test_old_layout_run_resumes_and_exports(inputs, clean_run, tmp_path):
    """A run written before issue 24 (markers at shards/{shard}.done.json) and left unfinished: the same command
    resumes it, skipping its committed shards and writing the new marker for the rest; it reads and exports as a
    run of the new layout does."""
    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    to_legacy_layout(out)
    for name in ("00005.done.json", "00005.parquet"):  # not committed when the old run stopped
        (out / "shards" / name).unlink()
    before = snapshot(out)

    result = run_job(inputs, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{SHARDS} shards ({SHARDS - 1} already done)" in result.stdout
    after = snapshot(out)
    assert all(after[name] == before[name] for name in before), "a committed shard of the old run was rewritten"
    assert sorted(set(after) - set(before)) == ["shards/00005.parquet", "shards/_done/00005.json"]
    assert summary(open_run(str(out))) == summary(open_run(str(clean_run)))
    assert_same_table(read_rows(out), read_rows(clean_run))
    old = export_dataset(str(out), str(tmp_path / "old"), threshold=0.0, log=lambda line: None)
    new = export_dataset(str(clean_run), str(tmp_path / "new"), threshold=0.0, log=lambda line: None)
    assert {**old, "run": None} == {**new, "run": None}
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == sorted(p.name for p in (tmp_path / "new").iterdir())
    for tar in (tmp_path / "new").glob("*.tar"):
        assert (tmp_path / "old" / tar.name).read_bytes() == tar.read_bytes()
