"""Running a suite: plan the tasks, read their data, start the model actors, run each task, record the history.

Everything a model cannot run is decided before any model loads: a task whose model cannot be had here (a seed
that exists only as a .pth not converted) is skipped with the reason, and every runnable task's annotation files and images are
read and checked first, so a missing file fails the run in seconds, not after an hour of captioning. Torch-free
until the model actors start.

A task that raises while it runs is recorded as failed, with its reason, and the next task runs. A run's rows land
in the history together, once every task has had its turn, or not at all (an interrupted run records nothing).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from evaluation.loaders import load_dataset
from evaluation.results import RunInfo, append_history, new_run, task_rows, write_predictions
from evaluation.suite import Suite, Task
from evaluation.tasks import RUNNERS
from models.names import ModelLoadError, resolve

# The model task each task type runs on.
MODEL_TASK = {"caption": "caption", "retrieval": "retrieval", "vqa": "vqa", "nlvr": "nlvr", "grounding": "grounding"}


@dataclass
class Options:
    evaldir: Path
    limit: int | None = None
    device: str = "auto"
    precision: str = "auto"
    model_threads: int | None = None


@dataclass
class RunResult:
    run: RunInfo
    rows: list[dict]
    titles: dict[str, str]

    @property
    def failed(self) -> dict[str, str]:
        """{task: reason} of the tasks that raised while they ran."""
        return {row["task"]: row["note"] for row in self.rows if row["status"] == "failed"}


def skip_reason(task: Task) -> str | None:
    """Why `task` cannot run (its model does not exist in capfilt yet), or None. A model of the wrong kind is an error."""
    spec = resolve(task.model)
    needed = MODEL_TASK[task.type]
    if spec.task is not None and spec.task != needed:
        raise ModelLoadError(f"task {task.name!r} needs a {needed} model, but its role {task.role!r} is "
                             f"{task.model!r}, a {spec.task} model")
    if spec.kind == "unavailable":
        return f"model unavailable: {spec.location}"
    if task.type not in RUNNERS:
        return f"model unavailable: capfilt has no {task.type} model class yet"
    return None


def role_models(plan: list[tuple[Task, str | None]]) -> dict[str, tuple[str, str, int | None]]:
    """{role: (model, model task, image size or None for the checkpoint's)} of the tasks that run. The suite has
    checked that the tasks of one role agree on the size."""
    roles = {}
    for task, reason in plan:
        if reason is None:
            roles.setdefault(task.role, (task.model, MODEL_TASK[task.type], task.protocol.get("image_size") or None))
    return roles


def _summary(outcome) -> str:
    shown = list(outcome.metrics.items())[:4]
    return ", ".join(f"{name} {value:.2f}" for name, value in shown)


def failure_reason(exc: BaseException) -> str:
    """One line saying why a task failed: the exception's type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def run_suite(suite: Suite, options: Options, log=print) -> RunResult:
    """Run every task of `suite`, append its rows to the history of `options.evaldir` (all at once, after the last
    task), and return them. A task that raises an Exception is a `failed` row; the other tasks still run."""
    run = new_run(suite.name, str(suite.path), options.limit)
    plan = [(task, skip_reason(task)) for task in suite.tasks]
    data = {task.name: load_dataset(task, options.limit) for task, reason in plan if reason is None}
    roles = role_models(plan)
    log(f"evaluate: suite {suite.name}, run {run.run_id}: {len(plan)} tasks ({len(data)} to run), "
        f"models {', '.join(f'{r}={m}' for r, (m, *_) in roles.items()) or 'none'}")
    pools = {}
    rows: list[dict] = []
    if roles:
        from evaluation.actors import start_pools, stop_pools  # ray is imported only when a model runs

        started = time.time()
        pools = start_pools(roles, options.device, options.precision, options.model_threads)
        log(f"evaluate: {len(pools)} model role(s) loaded in {time.time() - started:.1f}s")
    try:
        for number, (task, reason) in enumerate(plan, start=1):
            prefix = f"[{number}/{len(plan)}] {task.name}"
            if reason is not None:
                rows += task_rows(run, task, {}, skipped=reason)
                log(f"{prefix}: skipped ({reason})")
                continue
            started = time.time()
            pool = pools[task.role]
            try:
                outcome = RUNNERS[task.type](task, data[task.name], pool)
            except Exception as exc:  # noqa: BLE001 - any crash of one task is that task's result, not the run's
                reason = failure_reason(exc)
                rows += task_rows(run, task, pool.info, failed=reason)
                log(f"{prefix}: failed ({reason})")
                continue
            if outcome.predictions is not None:
                write_predictions(options.evaldir, run.run_id, task.name, outcome.predictions)
            rows += task_rows(run, task, pool.info, outcome)
            log(f"{prefix}: {outcome.samples} samples, {_summary(outcome)} ({time.time() - started:.1f}s)")
    finally:
        if pools:
            stop_pools(pools)
    if rows:  # every task has had its turn: the run's rows land together (a failed task is a row too)
        append_history(options.evaldir, rows)
    return RunResult(run, rows, {task.name: task.title for task in suite.tasks})
