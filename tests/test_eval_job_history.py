"""The evaluation history (append, schema) and --compare's logic on hand-made histories; the report's labels."""
from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest

from evaluation.compare import compare_runs
from evaluation.report import metric_label, render_report
from evaluation.results import RunInfo, append_history, read_history, rows_table
from schemas.evaluation import COLUMN_NAMES, history_schema

T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc)


def row(run_id: str, day: int, metric: str = "CIDEr", value: float | None = 100.0, **changes) -> dict:
    base = {"run_id": run_id, "time": T0 + dt.timedelta(days=day), "suite": "seed", "suite_file": "seed.yaml",
            "task": "coco_caption", "task_type": "caption", "benchmark": "coco_caption", "dataset": "coco_karpathy",
            "dataset_file": "a.json", "split": "test", "metric": metric, "value": value, "status": "ok", "note": None,
            "samples": 5000, "limit": None, "model_role": "captioner", "model": "blip-base_3rdparty_caption",
            "model_fingerprint": "hub@1", "device": "cuda", "precision": "bf16", "capfilt_version": "0.1.0",
            "git_commit": "abc", "protocol": "{}"}
    return {**base, **changes}


def history(*rows):
    return rows_table(list(rows))


def test_history_appends_runs_and_keeps_its_schema(tmp_path):
    append_history(tmp_path, [row("r1", 0), row("r1", 0, metric="BLEU-4", value=40.0)])
    append_history(tmp_path, [row("r2", 1, value=None, status="unavailable", note="why")])
    table = pq.read_table(tmp_path / "results.parquet")
    assert table.schema.names == COLUMN_NAMES and table.num_rows == 3
    assert table.schema.field("time").type == history_schema().field("time").type
    assert table.column("run_id").to_pylist() == ["r1", "r1", "r2"]
    assert table.column("value").to_pylist() == [100.0, 40.0, None]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.lock", "results.parquet"]  # no temporary left
    # an older history without a newer column still reads, the column as nulls
    pq.write_table(table.drop(["git_commit"]), tmp_path / "results.parquet")
    assert read_history(tmp_path).column("git_commit").to_pylist() == [None] * 3


def test_compare_flags_drops_beyond_the_tolerance():
    table = history(row("r1", 0, value=120.0), row("r2", 1, value=100.0), row("r3", 2, value=99.6),
                    row("r3", 2, metric="BLEU-4", value=38.0))
    within = compare_runs(table, "r3", tolerance=0.5)
    assert within.previous_run == "r2"  # the newest earlier run, not the best one
    assert [(c.metric, round(c.delta, 2), c.status) for c in within.changes] == [("CIDEr", -0.4, "same")]
    assert not within.regressions and "no regression" in within.summary()
    strict = compare_runs(table, "r3", tolerance=0.1)
    assert [c.status for c in strict.regressions] == ["regression"]
    assert "1 REGRESSION(S)" in strict.summary() and "**REGRESSION**" in strict.markdown()
    better = compare_runs(history(row("r1", 0, value=90.0), row("r2", 1, value=100.0)), "r2")
    assert better.changes[0].status == "improved" and not better.regressions


def test_compare_matches_suite_model_and_sample_count():
    table = history(
        row("other-suite", 1, value=200.0, suite="fixtures"),
        row("other-model", 2, value=200.0, model="my-captioner"),
        row("old", 0, value=130.0),
        row("limited", 3, value=50.0, samples=10, limit=10),
        row("now", 4, value=100.0),
    )
    comparison = compare_runs(table, "now")
    assert comparison.previous_run == "limited"
    change = comparison.changes[0]
    assert (change.status, change.note) == ("not comparable", "n 10 -> 5000") and not comparison.regressions
    first = compare_runs(history(row("only", 0), row("x", 1, suite="fixtures")), "only")
    assert first.previous_run is None and "nothing to compare" in first.summary()
    weights = compare_runs(history(row("a", 0, value=101.0), row("b", 1, model_fingerprint="hub@2")), "b", 0.5)
    assert weights.regressions[0].note == "weights hub@1 -> hub@2"
    gone = compare_runs(history(row("a", 0), row("a", 0, metric="SPICE", value=20.0), row("b", 1),
                                row("b", 1, metric="SPICE", value=None, status="unavailable")), "b")
    assert gone.gone == ["coco_caption SPICE"]
    with pytest.raises(ValueError, match="tolerance"):
        compare_runs(table, "now", tolerance=-1)


def test_report_puts_published_numbers_beside_seed_named_models():
    run = RunInfo("r9", T0, "seed", "seed.yaml", None, "0.1.0", "abc")
    rows = [row("r9", 0, metric="BLEU-4", value=39.5), row("r9", 0, metric="CIDEr", value=131.0),
            row("r9", 0, metric="SPICE", value=None, status="unavailable", note="no CoreNLP"),
            row("r9", 0, task="mine", benchmark="mine", model="my-captioner", metric="CIDEr", value=90.0),
            row("r9", 0, task="vqav2", task_type="vqa", benchmark="vqav2", model="blip-base_3rdparty_vqa",
                metric="accuracy", value=77.0, samples=214354)]
    report = render_report(run, rows, {"coco_caption": "COCO caption", "vqav2": "VQAv2"})
    assert ("| blip-base_3rdparty_caption | COCO caption | test | 5000 | BLEU-4 39.50, CIDEr 131.00 | "
            "BLEU-4 40.12, CIDEr 132.82 |") in report
    mine = next(line for line in report.splitlines() if line.startswith("| my-captioner"))
    assert mine == "| my-captioner | mine | test | 5000 | CIDEr 90.00 |  |"  # no published number: not a seed name
    assert "| accuracy 77.00 | accuracy 78.20 (test-dev on the evaluation server) |" in report
    assert "| coco_caption | CIDEr | 131.00 | 132.82 |" in report
    assert "- `coco_caption` SPICE (unavailable): no CoreNLP" in report


def test_metric_labels():
    assert metric_label("i2t_r1") == "i2t R@1"
    assert metric_label("itc:t2i_r10") == "ITC t2i R@10"
    assert metric_label("accuracy:yes/no") == "accuracy (yes/no)"
    assert metric_label("r_mean") == "r_mean" and metric_label("CIDEr") == "CIDEr"
