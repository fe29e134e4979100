"""The evaluation job end to end on an embedded Ray: the fixture suite on the tiny models through the actors,
the history it writes, --compare against it (no regression; then a hand-made better history: exit 3), --limit."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from evaluation.results import append_history, read_history
from jobs.evaluate import main

ray = pytest.importorskip("ray")

RAN = {"coco_caption", "nocaps", "flickr30k_caption", "vqav2", "okvqa", "ocrvqa", "coco_retrieval", "flickr30k_retrieval",
       "blip2_coco_caption", "blip2_t5_coco_caption", "blip2_vqav2", "blip2_coco_retrieval",
       "nlvr2", "nlvr2_test", "refcoco_val", "refcoco_testA", "refcoco_testB"}


@pytest.fixture(scope="module")
def cluster():
    from pipelines.ray_runner import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def run(evaldir, *extra) -> int:
    # one torch thread per actor: the tiny models are latency-bound and 2 cores are shared with the driver
    return main(["--suite", "fixtures", "--output", str(evaldir), "--model-threads", "1", *extra])


@pytest.fixture(scope="module")
def first_run(cluster, tmp_path_factory):
    evaldir = tmp_path_factory.mktemp("evals")
    assert run(evaldir) == 0
    return evaldir


def test_fixture_suite_runs_every_task_through_the_actors(first_run):
    history = read_history(first_run).to_pylist()
    assert (first_run / "fixtures/FIXTURES.json").is_file()  # ${FIXTURES} built on demand
    assert {r["task"] for r in history} == RAN and len({r["run_id"] for r in history}) == 1
    ok = [r for r in history if r["status"] == "ok"]
    assert {r["task"] for r in ok} == RAN
    assert all(0.0 <= r["value"] <= 100.0 for r in ok)
    assert all(r["model_fingerprint"].startswith("tiny") and r["capfilt_version"] for r in ok)
    assert {r["model"] for r in ok if r["task"].startswith("blip2_")} == {
        "tiny-random-blip2_caption", "tiny-random-blip2-t5_caption", "tiny-random-blip2_vqa",
        "tiny-random-blip2_retrieval"}  # BLIP-2 runs in the same actors (tests/test_eval_blip2.py: its protocols)
    metrics = {(r["task"], r["metric"]) for r in ok}
    assert {("coco_caption", "CIDEr"), ("coco_caption", "BLEU-4"), ("vqav2", "accuracy"), ("ocrvqa", "accuracy"),
            ("coco_retrieval", "i2t_r1"), ("coco_retrieval", "t2i_r5"), ("coco_retrieval", "itc:i2t_r1")} <= metrics
    assert ("coco_caption", "METEOR") not in metrics  # the fixture suite leaves METEOR's JVM out
    samples = {r["task"]: r["samples"] for r in ok}
    assert samples == {"coco_caption": 6, "nocaps": 4, "flickr30k_caption": 5, "vqav2": 10, "okvqa": 6, "ocrvqa": 12,
                       "coco_retrieval": 6, "flickr30k_retrieval": 5, "blip2_coco_caption": 6, "blip2_t5_coco_caption": 6,
                       "blip2_vqav2": 10, "blip2_coco_retrieval": 6, "nlvr2": 4, "nlvr2_test": 2, "refcoco_val": 1,
                       "refcoco_testA": 3, "refcoco_testB": 2}  # RefCOCO: one sample per sentence
    assert {("nlvr2", "accuracy"), ("nlvr2", "consistency"), ("refcoco_testA", "accuracy"),
            ("refcoco_testA", "mean_iou")} <= metrics
    retrieval = next(r for r in ok if r["task"] == "coco_retrieval")
    assert json.loads(retrieval["protocol"])["k"] == 4 and retrieval["model"] == "tiny-random_retrieval"
    assert not [r for r in history if r["status"] == "skipped"]
    for r in (r for r in history if r["status"] == "unavailable"):  # SPICE without its CoreNLP jars: never a 0
        assert r["metric"] == "SPICE" and r["value"] is None and "CoreNLP" in r["note"]
    run_id = history[0]["run_id"]
    predictions = json.loads((first_run / f"predictions/{run_id}/vqav2.json").read_text())
    assert len(predictions) == 10 and set(predictions[0]) == {"question_id", "answer"}
    report = (first_run / f"report-{run_id}.md").read_text()
    assert report == (first_run / "latest.md").read_text()
    assert "| tiny-random_caption | COCO caption | test | 6 | BLEU-4 " in report
    assert "| tiny-random_nlvr | NLVR2 | dev | 4 | accuracy " in report
    assert "| tiny-random_grounding | RefCOCO val | val | 1 | accuracy " in report
    assert "|  | RefCOCO testB | testB | 2 | accuracy " in report
    boxes = json.loads((first_run / f"predictions/{run_id}/refcoco_testA.json").read_text())
    assert len(boxes) == 3 and set(boxes[0]) == {"ref_id", "sentence", "bbox"} and len(boxes[0]["bbox"]) == 4


def test_second_run_compares_with_the_first_and_finds_no_regression(first_run, capsys):
    capsys.readouterr()
    assert run(first_run, "--compare") == 0
    out = capsys.readouterr().out
    history = read_history(first_run)
    runs = sorted(set(history.column("run_id").to_pylist()))
    assert len(runs) == 2
    assert "no regression" in out and f"compare with run {runs[0]}" in out
    assert "Changes since the previous run" in (first_run / "latest.md").read_text()


def test_a_better_previous_run_makes_compare_exit_3(first_run, capsys):
    history = read_history(first_run).to_pylist()
    newest = max(history, key=lambda r: r["time"])["run_id"]
    rows = [r for r in history if r["run_id"] == newest and r["task"] == "vqav2"]
    for r in rows:  # a copy of the last vqav2 result, made just now, with an accuracy 5 points higher
        r.update(run_id="handmade", time=dt.datetime.now(dt.timezone.utc))
        if r["metric"] == "accuracy":
            r["value"] += 5.0
    append_history(first_run, rows)
    capsys.readouterr()
    assert run(first_run, "--compare", "--tasks", "vqav2") == 3
    out = capsys.readouterr().out
    assert "compare with run handmade" in out and "1 REGRESSION(S)" in out
    assert "**REGRESSION**" in (first_run / "latest.md").read_text()


def test_limit_scores_the_first_records_and_is_not_compared_with_full_runs(first_run, capsys):
    capsys.readouterr()
    assert run(first_run, "--limit", "3", "--tasks", "vqav2", "--compare") == 0
    out = capsys.readouterr().out
    history = read_history(first_run).to_pylist()
    newest = max(history, key=lambda r: r["time"])["run_id"]
    rows = [r for r in history if r["run_id"] == newest]
    assert {r["task"] for r in rows} == {"vqav2"}
    assert {r["samples"] for r in rows} == {3} and {r["limit"] for r in rows} == {3}
    assert "not comparable" in out and "no regression" in out  # 3 questions against 10: a change, not a drop
    assert "**--limit 3**" in (first_run / "latest.md").read_text()
    run_id = rows[0]["run_id"]
    assert len(json.loads((first_run / f"predictions/{run_id}/vqav2.json").read_text())) == 3


def test_the_seed_tables_nlvr2_and_refcoco_rows_run_on_models_in_the_toolbox_layout(cluster, tmp_path):
    """The seed table's own NLVR2 (dev, test-P) and RefCOCO (val, testA, testB) tasks with the seeds' protocol, on
    models converted from the toolbox's layout (its tiny fixtures, as a user converts the seeds' downloads)."""
    from pathlib import Path

    from evaluation.fixtures import build_fixtures
    from models.convert import convert

    upstream = Path(__file__).parent / "fixtures" / "upstream"
    data = build_fixtures(tmp_path / "data")
    convert(upstream / "toolbox-nlvr/model.pth", tmp_path / "nlvr", tokenizer=upstream, head_dim=8)
    convert(upstream / "toolbox-grounding/model.pth", tmp_path / "grounding", head_dim=8)  # its vocabulary beside it
    tasks = "nlvr2_dev,nlvr2,refcoco_val,refcoco_testA,refcoco_testB"
    code = main(["--suite", "blip_seed_table", "--data-root", str(data), "--output", str(tmp_path / "evals"),
                 "--model", f"nlvr={tmp_path / 'nlvr'}", "--model", f"grounding={tmp_path / 'grounding'}",
                 "--tasks", tasks, "--model-threads", "1"])
    assert code == 0
    history = read_history(tmp_path / "evals").to_pylist()
    assert {r["task"] for r in history if r["status"] == "ok"} == set(tasks.split(","))
    assert {r["task"]: r["samples"] for r in history if r["metric"] == "accuracy"} == {
        "nlvr2_dev": 4, "nlvr2": 2, "refcoco_val": 1, "refcoco_testA": 3, "refcoco_testB": 2}
