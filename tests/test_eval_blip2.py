"""BLIP-2 in the evaluation suites: family protocols (defaults, BLIP-only keys and rank mode refused), the model
family from a name, Q-Former ITC in bounded blocks, the RoleServer on the tiny BLIP-2 roles, the fixture suite's
BLIP-2 tasks through the job on an embedded Ray, and the seed table's BLIP-2 rows beside their published numbers."""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from evaluation.metrics.retrieval import itc_scores
from evaluation.protocols import BLIP2, ProtocolError, generation_settings, merge_protocol
from evaluation.suite import SUITE_DIR, SuiteError, load_suite
from models.names import family_of

BLIP2_TASKS = ("blip2_coco_caption", "blip2_t5_coco_caption", "blip2_vqav2", "blip2_coco_retrieval")


# --- protocols -------------------------------------------------------------------------------------------------

def test_blip2_default_protocols_are_the_toolboxs():
    caption = merge_protocol("caption", family="blip2")
    assert {k: caption[k] for k in ("prompt", "num_beams", "max_new_tokens", "min_new_tokens", "length_penalty",
                                    "repetition_penalty", "image_size")} == \
        {"prompt": "a photo of", "num_beams": 5, "max_new_tokens": 30, "min_new_tokens": 1, "length_penalty": 1.0,
         "repetition_penalty": 1.0, "image_size": 0}
    assert "max_length" not in caption and "metrics" in caption and "batch_size" in caption
    vqa = merge_protocol("vqa", family="blip2")
    assert (vqa["mode"], vqa["prompt"], vqa["num_beams"], vqa["max_new_tokens"], vqa["min_new_tokens"],
            vqa["length_penalty"], vqa["normalize"]) == ("generate", "Question: {} Answer:", 5, 10, 1, -1.0, "official")
    retrieval = merge_protocol("retrieval", family="blip2")
    assert (retrieval["k"], retrieval["ks"], retrieval["itm_batch_size"]) == (128, [1, 5, 10], 256)
    # BLIP's stay as they were, and are the default family
    assert merge_protocol("caption")["max_length"] == 20 and merge_protocol("retrieval", family="blip")["k"] == 256
    with pytest.raises(ValueError, match="no nlvr protocol for blip2 models"):
        merge_protocol("nlvr", family="blip2")


def test_generation_settings_are_keywords_of_the_family_roles():
    from models.answerer import Answerer
    from models.blip2_captioner import Blip2Answerer, Blip2Captioner
    from models.captioner import Captioner

    for family, task_type, method in [("blip", "caption", Captioner.caption), ("blip", "vqa", Answerer.answer),
                                      ("blip2", "caption", Blip2Captioner.caption),
                                      ("blip2", "vqa", Blip2Answerer.answer)]:
        settings = generation_settings(merge_protocol(task_type, family=family))
        parameters = inspect.signature(method).parameters
        assert settings and set(settings) <= set(parameters), (family, task_type, settings)
        assert all(parameters[k].default == v for k, v in settings.items()), (family, task_type)
    assert set(generation_settings(merge_protocol("caption", family="blip2"))) == \
        {"prompt", "num_beams", "max_new_tokens", "min_new_tokens", "length_penalty", "repetition_penalty"}
    assert set(generation_settings(merge_protocol("vqa"))) == {"num_beams", "max_length", "min_length"}


@pytest.mark.parametrize("task_type, override, field, message", [
    ("caption", {"max_length": 20}, "max_length", r"BLIP's caption protocol, not of BLIP-2's.*use max_new_tokens"),
    ("caption", {"min_length": 5}, "min_length", "use min_new_tokens"),
    ("vqa", {"k": 8}, "k", "BLIP's vqa protocol, not of BLIP-2's"),
    ("vqa", {"mode": "rank"}, "mode", "refused for a BLIP-2 model: BLIP-2 answers by generation"),
    ("vqa", {"mode": "ranked"}, "mode", "should be one of generate"),
    ("vqa", {"prompt": "Question: Answer:"}, "prompt", "one '{}'"),
    ("caption", {"min_new_tokens": 31}, "min_new_tokens", "above max_new_tokens 30"),
    ("caption", {"image_size": -1}, "image_size", "at least 0"),
    ("caption", {"beams": 5}, "beams", "unknown setting for a caption task"),
])
def test_blip2_overrides_are_checked_against_blip2s_keys(task_type, override, field, message):
    with pytest.raises(ProtocolError, match=message) as info:
        merge_protocol(task_type, override, family="blip2")
    assert info.value.field == field


def test_blip2_keys_on_a_blip_model_are_refused_too():
    with pytest.raises(ProtocolError, match="BLIP-2's caption protocol, not of BLIP's") as info:
        merge_protocol("caption", {"max_new_tokens": 30}, family="blip")
    assert info.value.field == "max_new_tokens"
    with pytest.raises(ProtocolError, match="BLIP-2's vqa protocol, not of BLIP's") as info:
        merge_protocol("vqa", {"image_size": 364})
    assert info.value.field == "image_size"


CAPTION = {"name": "cap", "type": "caption", "model": "captioner", "split": "test",
           "dataset": {"format": "coco_karpathy", "annotations": "a.json", "images": "img"}}
VQA = {"name": "v", "type": "vqa", "model": "answerer", "split": "val",
       "dataset": {"format": "vqa", "questions": "q.json", "annotations": "a.json", "answer_list": "l.json",
                   "images": "i"}}


def _suite(tmp_path, tasks, models=None, **extra) -> Path:
    raw = {"name": "s", "models": models or {"captioner": "tiny-random-blip2_caption",
                                             "answerer": "tiny-random-blip2_vqa"}, "tasks": tasks, **extra}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _fails(path, where: str, message: str, **kwargs):
    with pytest.raises(SuiteError, match=rf"^{re.escape(str(path))}: {where}: .*{message}"):
        load_suite(path, **kwargs)


def test_suite_protocols_follow_the_family_of_each_tasks_model(tmp_path):
    path = _suite(tmp_path, [CAPTION, {**VQA, "protocol": {"mode": "generate"}}])
    suite = load_suite(path)
    caption, vqa = suite.tasks
    assert (caption.family, caption.protocol["num_beams"], caption.protocol["prompt"]) == ("blip2", 5, "a photo of")
    assert vqa.family == "blip2" and vqa.protocol["length_penalty"] == -1.0
    # a --model override to a BLIP model switches the task to BLIP's protocol
    blip = load_suite(path, models={"captioner": "tiny-random_caption", "answerer": "tiny-random_vqa"})
    assert blip.tasks[0].family == "blip" and blip.tasks[0].protocol["max_length"] == 20

    T = r"tasks\[0\] \(cap\)"
    _fails(_suite(tmp_path, [{**CAPTION, "protocol": {"max_length": 20}}]), T + r"\.protocol\.max_length",
           "use max_new_tokens")
    _fails(_suite(tmp_path, [{**VQA, "protocol": {"mode": "rank", "k": 128}}]), r"tasks\[0\] \(v\)\.protocol\.mode",
           "BLIP-2 answers by generation")
    # suite-level defaults: a setting no family has is refused there; one of the other family's names the default
    _fails(_suite(tmp_path, [CAPTION], protocol={"caption": {"beam": 3}}), r"protocol\.caption\.beam", "unknown")
    _fails(_suite(tmp_path, [CAPTION], protocol={"caption": {"min_length": 3}}), r"protocol\.caption\.min_length",
           "it applies to task 'cap', whose model 'tiny-random-blip2_caption' is BLIP-2")
    assert load_suite(_suite(tmp_path, [CAPTION], protocol={"caption": {"batch_size": 2}})).tasks[0].protocol[
        "batch_size"] == 2
    # a family without a protocol for the task type
    _fails(_suite(tmp_path, [CAPTION], models={"captioner": "tiny-random_clip"}), T + r"\.model",
           "a CLIP model: capfilt evaluates caption tasks on BLIP, BLIP-2 models only")


def test_one_role_loads_at_one_image_size(tmp_path):
    other = {**CAPTION, "name": "cap2", "protocol": {"image_size": 364}}
    _fails(_suite(tmp_path, [CAPTION, other]), r"tasks \(cap2\)\.protocol\.image_size",
           "task 'cap' runs role 'captioner' at 0: a role's model loads once")
    suite = load_suite(_suite(tmp_path, [{**CAPTION, "protocol": {"image_size": 364}}, other]))
    from evaluation.runner import role_models

    assert role_models([(t, None) for t in suite.tasks]) == {"captioner": ("tiny-random-blip2_caption", "caption", 364)}
    assert role_models([(load_suite(_suite(tmp_path, [CAPTION])).tasks[0], None)]) == \
        {"captioner": ("tiny-random-blip2_caption", "caption", None)}


# --- family_of -------------------------------------------------------------------------------------------------

def test_family_of_zoo_names_directories_and_hub_ids(tmp_path):
    assert family_of("tiny-random-blip2_caption") == "blip2" and family_of("blip2_3rdparty_retrieval") == "blip2"
    assert family_of("blip-base_3rdparty_caption") == "blip" and family_of("tiny-random_clip") == "clip"
    for architecture, family in [("Blip2ForConditionalGeneration", "blip2"), ("Blip2ForImageTextRetrieval", "blip2"),
                                 ("BlipForQuestionAnswering", "blip"), ("CLIPModel", "clip")]:
        folder = tmp_path / architecture
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}), encoding="utf-8")
        assert family_of(str(folder)) == family
    empty = tmp_path / "empty"
    empty.mkdir()
    assert family_of(str(empty)) == "blip"  # loading it says why it cannot run
    assert family_of("Salesforce/blip2-opt-2.7b") == "blip2" and family_of("hf:Salesforce/BLIP2-itm-vit-g@main") == "blip2"
    assert family_of("Salesforce/blip-image-captioning-base") == "blip"
    assert family_of("blip2-lab/finetuned-captioner") == "blip"  # the repo name decides, not the organisation


# --- Q-Former ITC ----------------------------------------------------------------------------------------------

def test_qformer_itc_is_the_max_over_queries_in_bounded_blocks():
    import tracemalloc

    rng = np.random.default_rng(0)
    images = rng.standard_normal((7, 32, 16)).astype(np.float32)
    texts = rng.standard_normal((11, 16)).astype(np.float32)
    naive = np.einsum("iqd,td->iqt", images, texts).max(axis=1)
    for block_bytes in (1, 3 * 32 * 11 * 4 + 5, 1 << 28):  # a block of 1 image, of 3 (7 = 3 + 3 + 1), all at once
        out = itc_scores(images, texts, block_bytes=block_bytes)
        assert out.dtype == np.float32 and out.shape == (7, 11)
        np.testing.assert_allclose(out, naive, rtol=1e-5, atol=1e-5)
    # BLIP's one vector per image: the plain product
    np.testing.assert_allclose(itc_scores(images[:, 0], texts), images[:, 0] @ texts.T, rtol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        itc_scores(images[:, :, :8], texts)

    # memory: numpy reports its buffers to tracemalloc; the images x queries x texts products (4 MB here) never
    # exist at once, only a block of them (256 kB) beside the images x texts result (128 kB)
    images = rng.standard_normal((64, 32, 16)).astype(np.float32)
    texts = rng.standard_normal((500, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        out = itc_scores(images, texts, block_bytes=1 << 18)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (64 * 32 * 500 * 4) // 4, peak
    np.testing.assert_allclose(out, np.einsum("iqd,td->iqt", images, texts).max(axis=1), rtol=1e-5, atol=1e-5)


# --- the roles behind the actors -------------------------------------------------------------------------------

def test_role_server_runs_blip2_roles_with_their_protocols(photos):
    import torch

    from evaluation.serving import ModelHost, RoleServer

    captioner = RoleServer("tiny-random-blip2_caption", "caption", "cpu", "fp32", image_size=48)
    assert captioner.info()["image_size"] == 48 and captioner.info()["family"] == "blip2"
    images = captioner.role.prepare(photos[:2])
    assert images.shape[1:3] == (48, 48)
    settings = generation_settings(merge_protocol("caption", {"max_new_tokens": 8}, family="blip2"))
    assert captioner.caption(images, settings) == captioner.role.caption(images, max_new_tokens=8)
    answerer = RoleServer("tiny-random-blip2_vqa", "vqa", "cpu", "fp32")
    images = answerer.role.prepare(photos[:2])
    questions = ["what is this?", "what color is it?"]
    settings = generation_settings(merge_protocol("vqa", family="blip2"))
    assert answerer.answer(images, questions, settings) == answerer.role.answer(images, questions)

    matcher = RoleServer("tiny-random-blip2_retrieval", "retrieval", "cpu", "fp32")
    role = matcher.role
    images = role.prepare(photos[:3])
    embeddings = matcher.index_images([10, 11, 12], images)
    assert embeddings.ndim == 3 and embeddings.shape[:2] == (3, 32)
    texts = ["a cat", "a cup of coffee", "a rocket on the pad", "an astronaut"]
    itc = itc_scores(embeddings, matcher.text_embeddings(texts))
    # the ITC of the role's own score() (max over the queries) for the pairs it scores
    scores = role.score(images, [[texts[0], texts[3]], [texts[1]], [texts[2]]])
    np.testing.assert_allclose(scores.itc, [itc[0, 0], itc[0, 3], itc[1, 1], itc[2, 2]], rtol=1e-5, atol=1e-6)
    logits = matcher.itm_logits([12, 10, 11, 12], texts)
    states, _ = role.image_features(images)
    direct = role.itm(states, texts, image_index=torch.tensor([2, 0, 1, 2]), logit=True).numpy()
    np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-5)
    assert matcher.clear_images() == 3
    host = ModelHost({"a": ("tiny-random-blip2_caption", "caption", 48), "b": ("tiny-random_caption", "caption")},
                     "cpu", "fp32")
    assert host.info()["a"]["image_size"] == 48 and host.info()["b"]["image_size"] == 32


# --- the job, end to end ---------------------------------------------------------------------------------------

def test_fixture_suites_blip2_tasks_run_through_the_job(tmp_path, capsys, monkeypatch):
    """As the README calls it: a relative --output, the fixtures built inside it."""
    pytest.importorskip("ray")
    import ray

    from evaluation.results import read_history
    from jobs.evaluate import main
    from pipelines.ray_runner import connect

    connect(num_cpus=2)
    try:
        out = tmp_path / "evals"
        monkeypatch.chdir(tmp_path)
        code = main(["--suite", "fixtures", "--output", "evals", "--model-threads", "1", "--tasks",
                     ",".join(BLIP2_TASKS)])
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr().err
    rows = read_history(out).to_pylist()
    assert {r["task"] for r in rows} == set(BLIP2_TASKS)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["task"] for r in ok} == set(BLIP2_TASKS)
    assert all(r["status"] in ("ok", "unavailable") for r in rows)  # SPICE may be unavailable, nothing skipped
    assert all(0.0 <= r["value"] <= 100.0 and r["model_fingerprint"].startswith("tiny") for r in ok)
    metrics = {(r["task"], r["metric"]) for r in ok}
    assert {("blip2_coco_caption", "CIDEr"), ("blip2_coco_caption", "BLEU-4"), ("blip2_t5_coco_caption", "CIDEr"),
            ("blip2_vqav2", "accuracy"), ("blip2_coco_retrieval", "i2t_r1"), ("blip2_coco_retrieval", "t2i_r1"),
            ("blip2_coco_retrieval", "itc:i2t_r1")} <= metrics
    first = {r["task"]: r for r in ok}
    assert {t: first[t]["benchmark"] for t in BLIP2_TASKS} == {
        "blip2_coco_caption": "coco_caption", "blip2_t5_coco_caption": "coco_caption", "blip2_vqav2": "vqav2",
        "blip2_coco_retrieval": "coco_retrieval"}
    assert {t: first[t]["samples"] for t in BLIP2_TASKS} == {
        "blip2_coco_caption": 6, "blip2_t5_coco_caption": 6, "blip2_vqav2": 10, "blip2_coco_retrieval": 6}
    caption = json.loads(first["blip2_coco_caption"]["protocol"])
    assert (caption["image_size"], caption["max_new_tokens"], caption["num_beams"]) == (48, 12, 5)
    assert json.loads(first["blip2_coco_retrieval"]["protocol"])["k"] == 4
    run_id = rows[0]["run_id"]
    answers = json.loads((out / f"predictions/{run_id}/blip2_vqav2.json").read_text())
    assert len(answers) == 10 and all(isinstance(a["answer"], str) for a in answers)
    report = (out / "latest.md").read_text()
    assert "| tiny-random-blip2_caption | COCO caption (BLIP-2) | test | 6 | BLEU-4 " in report
    assert "| tiny-random-blip2_retrieval | COCO retrieval (BLIP-2) | test | 6 | i2t R@1 " in report


def test_seed_table_report_shows_blip2_rows_beside_their_published_numbers(tmp_path):
    import datetime as dt

    from evaluation.report import render_report
    from evaluation.results import RunInfo, task_rows
    from evaluation.tasks import Outcome

    suite = load_suite(SUITE_DIR / "blip_seed_table.yaml", data_root=str(tmp_path))
    tasks = {t.name: t for t in suite.tasks}
    assert {n: (tasks[n].model, tasks[n].benchmark, tasks[n].family) for n in
            ("blip2_coco_caption", "blip2_vqav2", "blip2_coco_retrieval")} == {
        "blip2_coco_caption": ("blip2-opt2.7b_3rdparty-zeroshot_caption", "coco_caption", "blip2"),
        "blip2_vqav2": ("blip2-opt2.7b_3rdparty-zeroshot_vqa", "vqav2", "blip2"),
        "blip2_coco_retrieval": ("blip2_3rdparty_retrieval", "coco_retrieval", "blip2")}
    assert tasks["blip2_coco_caption"].protocol["image_size"] == 364
    assert tasks["blip2_vqav2"].protocol["mode"] == "generate" and "answer_list" not in tasks["blip2_vqav2"].dataset.files
    assert tasks["blip2_coco_retrieval"].protocol["k"] == 128 and tasks["coco_retrieval"].protocol["k"] == 256
    assert tasks["coco_caption"].family == "blip" and tasks["coco_caption"].protocol["max_length"] == 20

    run = RunInfo("r1", dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc), suite.name, str(suite.path), None, "0.1",
                  "abc")
    info = {"fingerprint": "hub@1", "device": "cuda", "precision": "bf16"}
    outcomes = {
        "blip2_coco_caption": Outcome({"BLEU-4": 32.0, "CIDEr": 110.0, "SPICE": 20.0}, 5000),
        "blip2_vqav2": Outcome({"accuracy": 52.0}, 214354),
        "blip2_coco_retrieval": Outcome({"i2t_r1": 85.0, "t2i_r1": 68.0, "i2t_r5": 97.0}, 5000),
    }
    rows = [row for name, outcome in outcomes.items() for row in task_rows(run, tasks[name], info, outcome)]
    report = render_report(run, rows, {t.name: t.title for t in suite.tasks})
    assert ("| blip2-opt2.7b_3rdparty-zeroshot_caption | COCO caption (BLIP-2 OPT-2.7b, zero-shot) | test | 5000 | "
            "BLEU-4 32.00, CIDEr 110.00 | BLEU-4 32.90, CIDEr 111.10 (zero-shot) |") in report
    assert ("| blip2-opt2.7b_3rdparty-zeroshot_vqa | VQAv2 (BLIP-2 OPT-2.7b, zero-shot) | val | 214354 | "
            "accuracy 52.00 | accuracy 53.50 (zero-shot) |") in report
    assert ("| blip2_3rdparty_retrieval | COCO retrieval (BLIP-2) | test | 5000 | i2t R@1 85.00, t2i R@1 68.00 | "
            "i2t R@1 85.40, t2i R@1 68.30 |") in report
    assert "| blip2_coco_caption | CIDEr | 110.00 | 111.10 |" in report
    assert "| blip2_coco_retrieval | i2t R@5 | 97.00 |  |" in report  # no published R@5 for BLIP-2
