"""Comparing a run with the previous run of the same suite and models; drops beyond a tolerance are regressions.

Metrics are matched on (task, split, metric, model). The previous run is the newest earlier run of the same suite
that measured at least one of those. Every metric is higher-is-better (BLEU, CIDEr, accuracy, recall), so a drop
of more than `tolerance` points is a regression. Values measured on different sample counts (another --limit, a
changed annotation file) are listed as not comparable, never as a regression.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from evaluation.report import metric_label

DEFAULT_TOLERANCE = 0.5  # points: well above bf16 / thread-order noise on a full split, below a real regression


@dataclass
class Change:
    task: str
    metric: str
    model: str
    before: float
    after: float
    status: str  # regression | improved | same | not comparable
    note: str = ""

    @property
    def delta(self) -> float:
        return self.after - self.before


@dataclass
class Comparison:
    run_id: str
    tolerance: float
    previous_run: str | None = None
    previous_time: object = None
    changes: list[Change] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # "task metric" measured before, not measured now

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.status == "regression"]

    def summary(self) -> str:
        if self.previous_run is None:
            return "compare: no earlier run of this suite with these models: nothing to compare"
        counts = {s: sum(c.status == s for c in self.changes) for s in ("regression", "improved", "not comparable")}
        verdict = f"{counts['regression']} REGRESSION(S)" if counts["regression"] else "no regression"
        return (f"compare with run {self.previous_run}: {len(self.changes)} metrics, {verdict} (drop > "
                f"{self.tolerance:g} points), {counts['improved']} improved, {counts['not comparable']} not comparable")

    def markdown(self) -> str:
        lines = ["## Changes since the previous run", "", self.summary()]
        if self.previous_run is None:
            return "\n".join(lines)
        shown = [c for c in self.changes if c.status != "same" or c.delta != 0]
        if shown:
            lines += ["", "| task | model | metric | before | now | change | status |", "|---|---|---|---|---|---|---|"]
            for c in shown:
                flag = f"**{c.status.upper()}**" if c.status == "regression" else c.status
                note = f" ({c.note})" if c.note else ""
                lines.append(f"| {c.task} | {c.model} | {metric_label(c.metric)} | {c.before:.2f} | {c.after:.2f} | "
                             f"{c.delta:+.2f} | {flag}{note} |")
        else:
            lines += ["", "Every metric is unchanged."]
        if self.gone:
            lines += ["", f"Measured before, not now: {', '.join(self.gone)}"]
        return "\n".join(lines)


def _key(row: dict) -> tuple:
    return row["task"], row["split"], row["metric"], row["model"]


def compare_runs(history: pa.Table, run_id: str, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Compare run `run_id` of `history` (the results.parquet table) with the previous run of its suite."""
    if tolerance < 0:
        raise ValueError(f"the tolerance must be at least 0, got {tolerance}")
    rows = history.to_pylist()
    current = [r for r in rows if r["run_id"] == run_id]
    if not current:
        raise ValueError(f"run {run_id!r} is not in the history")
    suite, started = current[0]["suite"], current[0]["time"]
    now = {_key(r): r for r in current if r["status"] == "ok"}
    earlier: dict[str, list[dict]] = {}
    for row in rows:
        if row["suite"] == suite and row["run_id"] != run_id and row["time"] <= started:
            earlier.setdefault(row["run_id"], []).append(row)
    comparison = Comparison(run_id, tolerance)
    for previous_id in sorted(earlier, key=lambda rid: (earlier[rid][0]["time"], rid), reverse=True):
        before = {_key(r): r for r in earlier[previous_id] if r["status"] == "ok"}
        if before.keys() & now.keys():
            comparison.previous_run, comparison.previous_time = previous_id, earlier[previous_id][0]["time"]
            break
    else:
        return comparison
    for key, row in now.items():
        old = before.get(key)
        if old is None:
            continue
        change = Change(row["task"], row["metric"], row["model"], old["value"], row["value"], "same")
        if old["samples"] != row["samples"]:
            change.status, change.note = "not comparable", f"n {old['samples']} -> {row['samples']}"
        elif change.delta < -tolerance:
            change.status = "regression"
        elif change.delta > tolerance:
            change.status = "improved"
        for column, what in (("model_fingerprint", "weights"), ("precision", "precision")):
            if old[column] != row[column]:  # said beside the change: the likely reason for it
                change.note = ", ".join(filter(None, [change.note, f"{what} {old[column]} -> {row[column]}"]))
        comparison.changes.append(change)
    tasks_now = {r["task"] for r in current}  # a run of some tasks only (--tasks) has not lost the others
    comparison.gone = [f"{key[0]} {metric_label(key[2])}" for key in before if key not in now and key[0] in tasks_now]
    return comparison
