"""A task that crashes is a failed row with its reason, the other tasks still run, and the job exits 2 with one
line; a run's rows land in results.parquet together or not at all. No model runs: the pools and runners are fakes."""
from __future__ import annotations

from pathlib import Path

import pytest

import evaluation.actors
from evaluation.fixtures import build_fixtures
from evaluation.results import read_history
from evaluation.tasks import RUNNERS, Outcome
from jobs.evaluate import main

TASKS = "coco_caption,coco_retrieval,vqav2"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    return build_fixtures(tmp_path_factory.mktemp("eval") / "fixtures")


class FakePool:
    size, image_size = 1, 32
    info = {"fingerprint": "fake", "device": "cpu", "precision": "fp32"}


@pytest.fixture
def fake_models(monkeypatch):
    ran: list[str] = []

    def start_pools(models, *args, **kwargs):
        return {role: FakePool() for role in models}

    def fine(task, data, pool):
        ran.append(task.name)
        return Outcome({"accuracy": 50.0}, samples=len(data.records))

    monkeypatch.setattr(evaluation.actors, "start_pools", start_pools)
    monkeypatch.setattr(evaluation.actors, "stop_pools", lambda pools: None)
    for kind in list(RUNNERS):
        monkeypatch.setitem(RUNNERS, kind, fine)
    return ran


def _argv(fixtures, out):
    return ["--suite", "fixtures", "--output", str(out), "--data-root", str(fixtures), "--tasks", TASKS]


def test_a_crashing_task_is_failed_with_its_reason_and_the_others_run(fixtures, fake_models, monkeypatch, tmp_path,
                                                                      capsys):
    def crash(task, data, pool):
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line of the trace")

    monkeypatch.setitem(RUNNERS, "retrieval", crash)
    out = tmp_path / "out"
    code = main(_argv(fixtures, out))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: 1 task(s) failed (coco_retrieval: RuntimeError: CUDA error")
    assert "Traceback" not in err and "second line" not in err
    assert fake_models == ["coco_caption", "vqav2"]  # the task after the crash still ran
    rows = read_history(out).to_pylist()
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["task"], r["note"]) for r in failed] == [("coco_retrieval", "RuntimeError: CUDA error: an illegal "
                                                                           "memory access")]
    assert {r["task"] for r in rows if r["status"] == "ok"} == {"coco_caption", "vqav2"}
    assert len({r["run_id"] for r in rows}) == 1
    assert "failed: RuntimeError: CUDA error" in (out / "latest.md").read_text(encoding="utf-8")


def test_an_interrupted_run_adds_no_rows(fixtures, fake_models, monkeypatch, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(fixtures, out)) == 0
    before = read_history(out).num_rows

    def interrupted(task, data, pool):
        raise KeyboardInterrupt

    monkeypatch.setitem(RUNNERS, "vqa", interrupted)  # the last task: the first two have rows by then
    with pytest.raises(KeyboardInterrupt):
        main(_argv(fixtures, out))
    assert read_history(out).num_rows == before


def test_ctrl_c_prints_one_line_and_exits_130(fixtures, fake_models, monkeypatch, tmp_path, capsys):
    from jobs.cli import entry
    from jobs.evaluate import INTERRUPTED

    def interrupted(task, data, pool):
        raise KeyboardInterrupt

    monkeypatch.setitem(RUNNERS, "caption", interrupted)
    assert entry(main, _argv(fixtures, tmp_path / "out"), interrupted=INTERRUPTED) == 130
    err = capsys.readouterr().err
    assert err.strip() == INTERRUPTED and not (tmp_path / "out" / "results.parquet").exists()
