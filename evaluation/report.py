"""The Markdown report of a run, in the shape of the seeds' tables, with their published numbers beside ours."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
# What a row of the seeds' tables shows for each task type, when no published number names the metrics.
HEADLINE = {
    "caption": ["BLEU-4", "CIDEr", "SPICE"],
    "vqa": ["accuracy"],
    "retrieval": ["i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"],
    "nlvr": ["accuracy"],
    "grounding": ["accuracy"],
}


@lru_cache(maxsize=1)
def published_table() -> dict:
    """{model: {benchmark: {metric: value, "note": text}}} from published.yaml."""
    return yaml.safe_load(PUBLISHED_FILE.read_text(encoding="utf-8")) or {}


def published(model: str, benchmark: str) -> dict:
    return dict(published_table().get(model, {}).get(benchmark, {}))


def metric_label(name: str) -> str:
    """i2t_r1 -> i2t R@1, itc:t2i_r5 -> ITC t2i R@5, accuracy:yes/no -> accuracy (yes/no); others unchanged."""
    head, _, tail = name.partition(":")
    if tail and head != "itc":
        return f"{head} ({tail})"
    base = tail or head
    direction, _, cut = base.partition("_r")
    if direction in ("i2t", "t2i") and cut.isdigit():
        base = f"{direction} R@{cut}"
    return f"ITC {base}" if tail else base


def _number(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _group(rows: list[dict]) -> list[tuple[dict, list[dict]]]:
    """(first row, rows) per task, in run order."""
    tasks: dict[str, list[dict]] = {}
    for row in rows:
        tasks.setdefault(row["task"], []).append(row)
    return [(group[0], group) for group in tasks.values()]


def _summary_cells(first: dict, group: list[dict]) -> tuple[str, str]:
    reference = published(first["model"], first["benchmark"])
    note = reference.pop("note", None)
    if first["status"] in ("skipped", "failed"):
        ours = f"{first['status']}: {first['note']}"
    else:
        by_metric = {r["metric"]: r for r in group}
        names = [m for m in reference] or HEADLINE.get(first["task_type"], [])
        cells = []
        for name in names:
            row = by_metric.get(name)
            if row is not None:
                shown = _number(row["value"]) if row["status"] == "ok" else "unavailable"
                cells.append(f"{metric_label(name)} {shown}")
        ours = ", ".join(cells)
    theirs = ", ".join(f"{metric_label(m)} {v:.2f}" for m, v in reference.items())
    return ours, (f"{theirs} ({note})" if theirs and note else theirs)


def render_report(run, rows: list[dict], titles: dict[str, str], comparison=None, full: bool = True) -> str:
    """Markdown: a seed-shaped summary table, every metric (when `full`), what was not measured and why, and the
    comparison with the previous run."""
    lines = [f"# Evaluation `{run.suite}`, run {run.run_id}", ""]
    lines.append(f"suite `{run.suite_file}`, started {run.time:%Y-%m-%d %H:%M:%S} UTC, capfilt {run.capfilt_version}"
                 f" (commit {run.git_commit or 'unknown'})")
    devices = sorted({f"{r['device']} {r['precision']}" for r in rows if r.get("device")})
    if devices:
        lines.append(f"models on {', '.join(devices)}")
    if run.limit:
        lines.append(f"**--limit {run.limit}**: the first {run.limit} records of each task, not the whole split")
    lines += ["", "| model | task | split | n | ours | published |", "|---|---|---|---|---|---|"]
    previous_model = None
    for first, group in _group(rows):
        ours, theirs = _summary_cells(first, group)
        model = first["model"] if first["model"] != previous_model else ""
        previous_model = first["model"]
        n = "" if first["samples"] is None else str(first["samples"])
        lines.append(f"| {model} | {titles.get(first['task'], first['task'])} | {first['split']} | {n} | {ours} | {theirs} |")
    lines += ["", "Published: the seeds' numbers (`evaluation/published.yaml`), shown for models named as in the seeds. "
              "Values in percent points (captioning metrics x100).", ""]
    if full:
        lines += ["## All metrics", "", "| task | metric | value | published | note |", "|---|---|---|---|---|"]
        noted = set()
        for row in (r for r in rows if r["status"] == "ok"):
            reference = published(row["model"], row["benchmark"]).get(row["metric"])
            note = row["note"] if row["task"] not in noted else ""  # a task's note once, on its first metric
            noted.add(row["task"])
            lines.append(f"| {row['task']} | {metric_label(row['metric'])} | {_number(row['value'])} | "
                         f"{_number(reference)} | {note or ''} |")
    missing = [r for r in rows if r["status"] != "ok"]
    if missing:
        lines += ["", "## Not measured", ""]
        for row in missing:
            what = f"`{row['task']}` {row['metric']}" if row["metric"] else f"`{row['task']}`"
            lines.append(f"- {what} ({row['status']}): {row['note']}")
    if comparison is not None:
        lines += ["", comparison.markdown()]
    return "\n".join(lines) + "\n"
