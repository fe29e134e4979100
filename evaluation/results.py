"""The evaluation history: a run's rows, appended to EVALDIR/results.parquet in one step (locked, temporary file,
rename): a reader sees every row of a run or none."""
from __future__ import annotations

import datetime as dt
import fcntl
import importlib.metadata
import json
import os
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.evaluation import COLUMN_NAMES, HISTORY_FILE, PREDICTIONS_DIR, history_schema

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunInfo:
    """What every row of one run shares."""

    run_id: str
    time: dt.datetime
    suite: str
    suite_file: str
    limit: int | None
    capfilt_version: str | None
    git_commit: str | None


def new_run(suite: str, suite_file: str, limit: int | None) -> RunInfo:
    now = dt.datetime.now(dt.timezone.utc)
    run_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    version, commit = code_version()
    return RunInfo(run_id, now, suite, suite_file, limit, version, commit)


def code_version() -> tuple[str | None, str | None]:
    """(capfilt package version, git commit with "-dirty" when the work tree has changes); None when unknown."""
    try:
        version = importlib.metadata.version("capfilt")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None  # no git, or a `ray job submit` working dir without .git
    return version, commit or None


def task_rows(run: RunInfo, task, model: dict, outcome=None, skipped: str | None = None,
              failed: str | None = None) -> list[dict]:
    """The history rows of one task: a row per metric (status ok or unavailable), or one row when it was skipped
    or failed (the reason in `note`)."""
    base = {
        "run_id": run.run_id, "time": run.time, "suite": run.suite, "suite_file": run.suite_file,
        "task": task.name, "task_type": task.type, "benchmark": task.benchmark, "dataset": task.dataset.format,
        "dataset_file": str(next(iter(task.dataset.files.values()))), "split": task.split, "limit": run.limit,
        "model_role": task.role, "model": task.model, "model_fingerprint": model.get("fingerprint"),
        "device": model.get("device"), "precision": model.get("precision"),
        "capfilt_version": run.capfilt_version, "git_commit": run.git_commit,
        "protocol": json.dumps(task.protocol, sort_keys=True),
    }
    if skipped is not None or failed is not None:
        status, note = ("skipped", skipped) if skipped is not None else ("failed", failed)
        return [{**base, "metric": None, "value": None, "status": status, "note": note, "samples": None}]
    rows = [{**base, "metric": name, "value": float(value), "status": "ok", "note": outcome.note or None,
             "samples": outcome.samples} for name, value in outcome.metrics.items()]
    rows += [{**base, "metric": name, "value": None, "status": "unavailable", "note": why, "samples": outcome.samples}
             for name, why in outcome.unavailable.items()]
    return rows


def rows_table(rows: list[dict]) -> pa.Table:
    schema = history_schema()
    return pa.Table.from_pylist([{name: row.get(name) for name in COLUMN_NAMES} for row in rows], schema=schema)


@contextmanager
def _locked(directory: Path):
    # Two scheduled runs appending at once would each rewrite the file from what they read: one run would be lost.
    with open(directory / ".results.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_history(evaldir) -> pa.Table | None:
    path = Path(evaldir) / HISTORY_FILE
    if not path.is_file():
        return None
    table = pq.read_table(path)
    schema = history_schema()
    columns = [table[name].cast(field.type) if name in table.column_names else pa.nulls(len(table), field.type)
               for name, field in zip(schema.names, schema)]  # rows written before a column existed read as null
    return pa.Table.from_arrays(columns, schema=schema)


def append_history(evaldir, rows: list[dict]) -> Path:
    """Add `rows` to EVALDIR/results.parquet: read, concatenate, write a temporary file, rename it into place."""
    directory = Path(evaldir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HISTORY_FILE
    with _locked(directory):
        existing = read_history(directory)
        table = rows_table(rows)
        if existing is not None:
            table = pa.concat_tables([existing, table])
        tmp = directory / f".{HISTORY_FILE}.tmp-{uuid.uuid4().hex}"
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_predictions(evaldir, run_id: str, task_name: str, predictions: list) -> Path:
    path = Path(evaldir) / PREDICTIONS_DIR / run_id / f"{task_name}.json"
    write_text(path, json.dumps(predictions, indent=1, default=str) + "\n")
    return path
