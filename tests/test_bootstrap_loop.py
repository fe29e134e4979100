"""The reduced bootstrapping loop (jobs/bootstrap.py --quick) end to end, its resumption, and the evidence maths."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shapeworld.captions import NOISE_KINDS
from shapeworld.evidence import roc_auc, wilson

ROOT = Path(__file__).resolve().parents[1]


def test_roc_auc_known_values():
    labels = np.array([True, True, False, False])
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5  # ties count half
    assert roc_auc(np.array([0.9, 0.3, 0.5, 0.1]), labels) == 0.75
    assert roc_auc(np.array([0.9]), np.array([True])) is None


def test_wilson_interval_known_values():
    # 56 of 67 wrong-shape captions removed (runs/epyc5). By hand: centre (p + z^2/2n) / (1 + z^2/n) = 0.8176,
    # half-width z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2) = 0.0882, with p = 56/67, z = 1.96
    low, high = wilson(56, 67)
    assert (round(low, 3), round(high, 3)) == (0.729, 0.906)
    assert wilson(0, 10)[0] == 0.0 and 0.0 < wilson(0, 10)[1] < 0.35
    assert wilson(10, 10)[1] == 1.0 and 0.65 < wilson(10, 10)[0] < 1.0
    narrow, wide = wilson(900, 1000), wilson(90, 100)  # ten times the samples: about a third of the width
    assert 0.25 < (narrow[1] - narrow[0]) / (wide[1] - wide[0]) < 0.4
    assert wilson(0, 0) == (0.0, 1.0)


def run_loop(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs/bootstrap.py"), "--workdir", str(workdir), "--quick"],
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)


def test_quick_loop_end_to_end_then_resumes(tmp_path):
    first = run_loop(tmp_path / "loop")
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((tmp_path / "loop/report.json").read_text())
    kinds = report["filter"]["kinds"]
    assert set(kinds) == {"clean", *NOISE_KINDS}
    assert sum(k["samples"] for k in kinds.values()) == report["filter"]["samples"] == 100  # every held-out sample
    assert 0.0 <= report["filter"]["auc"] <= 1.0
    for kind in kinds.values():  # every rate with its 95% interval around it
        low, high = kind["interval"]
        assert low <= kind.get("kept", kind.get("removed")) <= high
    assert report["captions"]["captions"] == 100 * report["settings"]["num_captions"]
    assert report["bootstrapped"]["samples"] > 0
    assert {"shapes_caption:CIDEr", "shapes_retrieval:i2t_r1"} <= set(report["comparison"])
    finetuned = report["finetuned"]
    assert "CIDEr" in finetuned["shapes_caption"] and "i2t_r1" in finetuned["shapes_retrieval"]
    assert 0.0 <= finetuned["shapes_vqa"]["accuracy"] <= 100.0
    assert 0.0 <= finetuned["shapes_nlvr2"]["accuracy"] <= 100.0  # the loop's own NLVR2 and grounding models
    assert 0.0 <= finetuned["shapes_refcoco_testA"]["accuracy"] <= 100.0 and "mean_iou" in finetuned["shapes_refcoco_testB"]
    assert set(report["baselines"]) == {"nlvr2", "refcoco"} and report["baselines"]["nlvr2"]["chance"] == 50.0
    assert "ROC AUC" in (tmp_path / "loop/REPORT.md").read_text()
    # one Ray Train run per group of jobs: the vision encoder, the base with the fine-tuning from it and the raw
    # models; the bootstrapped
    assert {"train vision, base, captioner, filter, vqa, nlvr, grounding, raw-seed0",
            "train boot-seed0"} <= set(report["seconds"])
    assert list(report["job_seconds"]) == ["vision", "base", "captioner", "filter", "vqa", "nlvr", "grounding",
                                           "raw-seed0", "boot-seed0"]
    def init(name):
        return json.loads((tmp_path / "loop" / name / "train.json").read_text())["job"]["init"]

    assert init("base") == str(tmp_path / "loop" / "vision")  # the base starts from the vision encoder,
    assert init("raw-seed0") is None and init("boot-seed0") is None  # the compared models from a random one
    assert all(seconds > 0 for seconds in report["job_seconds"].values())
    worker_lines = [line for line in first.stdout.splitlines() if "RayTrainWorker" in line and "train " in line]
    assert worker_lines and len(worker_lines) == len(set(worker_lines))  # each progress line shown once

    again = run_loop(tmp_path / "loop")  # everything is there: every stage is skipped, the report is rebuilt
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train raw-seed0 ..." not in again.stdout and "train raw-seed0: already done" in again.stdout
    second = json.loads((tmp_path / "loop/report.json").read_text())
    assert second["filter"] == report["filter"] and second["comparison"] == report["comparison"]
    stages = {k: v for k, v in report["seconds"].items() if k != "total this invocation"}
    assert "train boot-seed0" in stages and {k: second["seconds"][k] for k in stages} == stages  # the first run's

    # the filter sweep of RESULTS.md on this loop: a filter fine-tuned from its base, judged on a validation world
    sweep = subprocess.run([sys.executable, str(ROOT / "benchmarks/filter_sweep.py"), str(tmp_path / "loop"),
                            '{"epochs": 1, "batch_size": 16}', "--validation", str(tmp_path / "val"),
                            "--validation-shards", "1", "--validation-per-shard", "40"],
                           capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    line = next(line for line in sweep.stdout.splitlines() if line.startswith("batch_size16-epochs1-"))
    assert "clean kept" in line and "worst removed" in line and "AUC" in line, line
    variant = tmp_path / "loop/filter-sweep/batch_size16-epochs1-lr0.0005-margin0.15-seed0"
    assert (variant / "capfilt-val40/summary.json").is_file()
    assert json.loads((tmp_path / "val/WORLD.json").read_text())["counts"]["heldout"] == 40
