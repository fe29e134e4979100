"""Evaluation suites: the shipped suites load, mistakes name the file and the field, data problems fail early.

No Ray here: every failure below happens before a model actor would start.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evaluation.fixtures import build_fixtures
from evaluation.suite import SUITE_DIR, SuiteError, load_suite, parse_model_overrides
from jobs.evaluate import main

REPO = Path(__file__).resolve().parents[1]
SUITES = sorted(SUITE_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    return build_fixtures(tmp_path_factory.mktemp("eval") / "fixtures")


def test_every_shipped_suite_loads(fixtures):
    assert {p.stem for p in SUITES} >= {"blip_seed_table", "fixtures"}
    for path in SUITES:
        suite = load_suite(path, data_root=str(fixtures), variables={"FIXTURES": str(fixtures)})
        assert suite.tasks and all(t.model == suite.models[t.role] for t in suite.tasks)


def test_seed_suite_follows_the_blip_protocol(tmp_path):
    suite = load_suite(SUITE_DIR / "blip_seed_table.yaml", data_root=str(tmp_path))
    tasks = {t.name: t for t in suite.tasks}
    assert {t.type for t in suite.tasks} == {"caption", "vqa", "retrieval", "nlvr", "grounding"}
    caption = tasks["coco_caption"].protocol
    assert (caption["prompt"], caption["num_beams"], caption["max_length"], caption["min_length"]) == \
        ("a picture of ", 3, 20, 5)
    assert "METEOR" in caption["metrics"] and "SPICE" in caption["metrics"]
    assert tasks["coco_retrieval"].protocol["k"] == 256 and tasks["flickr30k_retrieval"].protocol["k"] == 128
    assert tasks["vqav2"].protocol["mode"] == "rank" and tasks["vqav2"].protocol["k"] == 128
    assert tasks["okvqa"].protocol["mode"] == "generate" and tasks["okvqa"].protocol["num_beams"] == 3
    assert tasks["coco_caption"].dataset.files["annotations"] == tmp_path / "coco/annotations/coco_karpathy_test.json"
    assert suite.models["captioner"] == "blip-base_3rdparty_caption"


def test_seed_suite_needs_a_data_root(monkeypatch):
    monkeypatch.delenv("CAPFILT_DATA", raising=False)
    with pytest.raises(SuiteError, match=r"blip_seed_table.yaml: data_root: \$\{CAPFILT_DATA\} is not set.*--data-root"):
        load_suite(SUITE_DIR / "blip_seed_table.yaml")
    monkeypatch.setenv("CAPFILT_DATA", "/data/bench")
    suite = load_suite(SUITE_DIR / "blip_seed_table.yaml")
    assert str(suite.tasks[0].dataset.images) == "/data/bench/coco/images"


def test_fixture_suite_skips_meteor():
    suite = load_suite(SUITE_DIR / "fixtures.yaml", variables={"FIXTURES": "/fx"})
    assert suite.uses_fixtures
    assert all("METEOR" not in t.protocol["metrics"] for t in suite.tasks if t.type == "caption")
    assert not load_suite(SUITE_DIR / "fixtures.yaml", data_root="/elsewhere").uses_fixtures  # nothing to build


T = r"tasks\[0\] \(cap\)"  # how errors name the first task of the suites below
GOOD_TASK = {"name": "cap", "type": "caption", "model": "captioner", "split": "test",
             "dataset": {"format": "coco_karpathy", "annotations": "a.json", "images": "img"}}


def _suite(tmp_path, **changes) -> Path:
    raw = {"name": "s", "models": {"captioner": "tiny-random_caption", "answerer": "tiny-random_vqa"},
           "tasks": [dict(GOOD_TASK)]}
    task_changes = changes.pop("task", {})
    raw["tasks"][0].update(task_changes)
    raw.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("changes, where, message", [
    ({"tasks": []}, "tasks", "lists no task"),
    ({"models": "tiny"}, "models", "should be a mapping"),
    ({"colour": 1}, "top level", r"unknown field\(s\) \['colour'\]"),
    ({"task": {"type": "captioning"}}, T + r"\.type", "unknown task type 'captioning'"),
    ({"task": {"model": "writer"}}, T + r"\.model", "role 'writer' is not in 'models'"),
    ({"task": {"split": None}}, T, "missing field 'split'"),
    ({"task": {"dataset": {"format": "coco", "annotations": "a.json", "images": "i"}}},
     T + r"\.dataset\.format", "unknown format 'coco'"),
    ({"task": {"dataset": {"format": "nlvr2", "annotations": "a.json", "images": "i"}}},
     T + r"\.dataset\.format", "'nlvr2' has no caption data"),
    ({"task": {"dataset": {"format": "coco_karpathy", "images": "i"}}}, T + r"\.dataset", "missing field 'annotations'"),
    ({"task": {"dataset": {**GOOD_TASK["dataset"], "questions": "q.json"}}}, T + r"\.dataset", "unknown field"),
    ({"task": {"protocol": {"beams": 5}}}, T + r"\.protocol\.beams", "unknown setting for a caption task"),
    ({"task": {"protocol": {"num_beams": "three"}}}, T + r"\.protocol\.num_beams", "should be int"),
    ({"task": {"protocol": {"num_beams": 0}}}, T + r"\.protocol\.num_beams", "at least 1"),
    ({"task": {"protocol": {"metrics": ["BLEU-4", "WER"]}}}, T + r"\.protocol\.metrics", r"unknown caption metric.*WER"),
    ({"task": {"protocol": {"min_length": 30}}}, T + r"\.protocol\.min_length", "above max_length"),
    ({"protocol": {"captions": {}}}, r"protocol\.captions", "should be a task type"),
    ({"protocol": {"retrieval": {"k": -1}}}, r"protocol\.retrieval\.k", "at least 1"),
    ({"task": {"dataset": {"format": "coco_karpathy", "annotations": "${NO_SUCH_VARIABLE_X}/a.json", "images": "i"}}},
     T + r"\.dataset\.annotations", r"\$\{NO_SUCH_VARIABLE_X\} is not set"),
])
def test_suite_mistakes_name_the_file_and_the_field(tmp_path, changes, where, message):
    path = _suite(tmp_path, **changes)
    with pytest.raises(SuiteError, match=rf"^{re.escape(str(path))}: {where}: .*{message}"):
        load_suite(path)


def test_rank_needs_an_answer_list_and_roles_serve_one_task_type(tmp_path):
    vqa = {"name": "v", "type": "vqa", "model": "answerer", "split": "val", "protocol": {"mode": "rank"},
           "dataset": {"format": "vqa", "questions": "q.json", "annotations": "a.json", "images": "i"}}
    with pytest.raises(SuiteError, match=r"tasks\[1\] \(v\)\.dataset: protocol mode 'rank' needs an 'answer_list'"):
        load_suite(_suite(tmp_path, tasks=[GOOD_TASK, vqa]))
    with pytest.raises(SuiteError, match=r"duplicate task name 'cap'"):
        load_suite(_suite(tmp_path, tasks=[GOOD_TASK, GOOD_TASK]))
    retrieval = {**GOOD_TASK, "name": "ret", "type": "retrieval"}
    with pytest.raises(SuiteError, match=r"role 'captioner' serves caption tasks and retrieval tasks"):
        load_suite(_suite(tmp_path, tasks=[GOOD_TASK, retrieval]))


def test_broken_yaml_missing_file_overrides_and_task_selection(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [\n", encoding="utf-8")
    with pytest.raises(SuiteError, match=rf"^{bad}: not valid YAML"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "missing.yaml")
    path = _suite(tmp_path)
    with pytest.raises(SuiteError, match=r"--model filter=x: no role 'filter' in this suite \(roles: answerer, captioner\)"):
        load_suite(path, models={"filter": "x"})
    assert load_suite(path, models={"captioner": "/my/model"}).models == {"captioner": "/my/model"}
    with pytest.raises(SuiteError, match=r"--tasks names \['nope'\]"):
        load_suite(path, tasks=["nope"])
    assert parse_model_overrides(["captioner = a", "filter=b=c"]) == {"captioner": "a", "filter": "b=c"}
    with pytest.raises(ValueError, match="expected ROLE=NAME"):
        parse_model_overrides(["captioner"])
    # relative dataset paths: against the data root; without one, against the suite's folder
    suite = load_suite(path)
    assert suite.tasks[0].dataset.files["annotations"] == tmp_path.resolve() / "a.json"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_user_mistakes_print_one_error_line_and_exit_2(tmp_path, capsys):
    for argv, expected in [
        (["--suite", str(tmp_path / "none.yaml"), "--output", str(tmp_path)], "suite file not found"),
        (["--suite", "fixtures", "--output", str(tmp_path), "--model", "captioner"], "expected ROLE=NAME"),
        (["--suite", "fixtures", "--output", str(tmp_path), "--limit", "0"], "--limit must be at least 1"),
        (["--output", str(tmp_path)], "the following arguments are required: --suite"),
        (["--suite", "fixtures", "--output", str(REPO / "README.md" / "x")], "cannot create the evaluation directory"),
        (["--suite", "fixtures", "--output", str(tmp_path), "--model", "captioner=tiny-random_vqa", "--tasks",
          "coco_caption"], "needs a caption model, but its role 'captioner' is 'tiny-random_vqa', a vqa model"),
        (["--suite", "fixtures", "--output", str(tmp_path), "--model", "captioner=no-such-model"], "unknown model"),
    ]:
        code, _, err = _run(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_missing_dataset_files_are_named_before_any_model_starts(fixtures, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(fixtures, data)
    (data / "okvqa/mscoco_val2014_annotations.json").unlink()
    argv = ["--suite", "fixtures", "--output", str(tmp_path / "out"), "--data-root", str(data)]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err == f"error: {data / 'okvqa/mscoco_val2014_annotations.json'}: file not found\n"
    (data / "coco/images/val2014/COCO_val2014_000000000102.jpg").unlink()
    code, _, err = _run(capsys, *argv, "--tasks", "coco_caption")
    assert code == 2
    assert err.startswith(f"error: {data / 'coco/images/val2014/COCO_val2014_000000000102.jpg'}: image file not found")
    assert "coco_karpathy_test.json" in err
    assert not (tmp_path / "out/results.parquet").exists()


def test_published_numbers_beside_seed_named_models_without_any_model(fixtures, tmp_path, capsys, monkeypatch):
    """The seed suite's NLVR2 and RefCOCO models exist only as the toolbox's .pth downloads: without them the tasks
    are skipped with the reason, no model actor starts, and the seeds' numbers stand beside them in the report and
    its Markdown file."""
    import evaluation.actors

    def no_models(*args, **kwargs):
        raise AssertionError("a model actor was started for tasks that have no model")

    monkeypatch.setattr(evaluation.actors, "start_pools", no_models)
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "--suite", "blip_seed_table", "--data-root", str(fixtures), "--output", str(out),
                           "--tasks", "nlvr2,refcoco_testA,refcoco_testB")
    assert code == 0
    report = (out / "latest.md").read_text(encoding="utf-8")
    assert "| blip-base_3rdparty_nlvr | NLVR2 test-P | test-P |  | skipped: model unavailable: BLIP NLVR2 exists only" in report
    assert "| accuracy 82.33 |" in report and "| accuracy 86.14 |" in report and "| accuracy 77.33 |" in report
    assert "accuracy 82.33" in stdout


def test_job_script_runs_from_any_directory(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "jobs/evaluate.py"), "--suite", "nope", "--output", "x"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "error: nope: suite file not found\n"
