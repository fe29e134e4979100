"""The shape-world models shipped in models/checkpoints, judged on shape-world data generated here, never seen in
training, through the user's entry points: the CapFilt job (`--demo`) and the evaluation suite.

The floors sit below what the shipped models measured on this data (RESULTS.md, "Shipped models"), so that a worse
checkpoint fails, with room for the few dozen samples per kind. They are not issue 5's targets (90% of each noise
kind removed, 90% of clean captions kept), which the held-out shards of the loop measure (RESULTS.md)."""
from __future__ import annotations

import pytest

from models.loading import load_checkpoint
from shapeworld import evidence
from shapeworld.web import TRUTH_FILE

ray = pytest.importorskip("ray")

SEED = 20261122  # the training world is seed 0; the demo draws from a stream no part of a world uses
SHARDS, PER_SHARD = 2, 250
# Measured on this data (2 x 250 samples, seed SEED): removed 100% of every noise kind (14 to 45 captions each);
# 96.6% of clean kept; ROC AUC 0.993; 92.8% of synthetic captions fully correct (96.3% of those kept). The suite on a
# small fresh world: CIDEr 673, R@1 100 / 100, VQA 95. The floors are the targets (90% / 90%).
REMOVED = {kind: 0.9 for kind in ("empty", "filename", "spam", "wrong_color", "wrong_count", "wrong_position",
                                  "wrong_shape")}  # share of each noise kind removed
KEPT = 0.9  # share of the clean web captions kept (p(match) >= 0.5)
AUC = 0.98
CAPTIONS_CORRECT = 0.85  # nucleus-sampled synthetic captions right in count, colour, shape and position
CIDER, RETRIEVAL_R1, VQA_ACCURACY = 600, 90, 90  # the suite on a small fresh world (30 images, 60 questions)
NLVR_ACCURACY = 60  # measured 67.5 on these 40 pairs (chance 50); grounding: no floor, it is below trivial (RESULTS.md)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`jobs/capfilt.py --demo` with the shipped models, on 2 x 250 fresh samples, in this process."""
    from jobs.capfilt import main
    from shapeworld import demo

    out = tmp_path_factory.mktemp("demo")
    original = demo.build_demo_shards
    demo.build_demo_shards = lambda folder, seed: original(folder, seed, shards=SHARDS, per_shard=PER_SHARD)
    try:
        assert main(["--demo", "--output", str(out), "--seed", str(SEED), "--num-captions", "2"]) == 0
    finally:
        demo.build_demo_shards = original
        ray.shutdown()
    return out / "run", out / "shards" / TRUTH_FILE


def test_the_demo_ends_with_its_report(demo_run):
    """`make demo` writes the curator's report of its run, thumbnails embedded."""
    run, _ = demo_run
    page = (run / "report.html").read_text()
    assert page.count('<img class="thumb" src="data:image/jpeg;base64,') >= 20 and page.count("<svg") == 4


def test_shipped_models_load_from_the_zoo():
    for name, task in (("shapes_caption", "caption"), ("shapes_retrieval", "retrieval"), ("shapes_vqa", "vqa")):
        checkpoint = load_checkpoint(name, task=task)
        assert checkpoint.fingerprint.startswith("sha256:") and checkpoint.image_size == 96


def test_filter_removes_noise_and_keeps_clean_captions(demo_run):
    run, truth = demo_run
    quality = evidence.filter_quality(run, truth, threshold=0.5)
    assert quality["samples"] == SHARDS * PER_SHARD
    kinds = quality["kinds"]
    assert set(kinds) == {"clean", *REMOVED}
    assert kinds["clean"]["kept"] >= KEPT, kinds
    for kind, floor in REMOVED.items():
        assert kinds[kind]["removed"] >= floor, (kind, kinds)
    assert quality["auc"] >= AUC, quality["auc"]


def test_synthetic_captions_are_mostly_right(demo_run):
    run, truth = demo_run
    captions = evidence.caption_quality(run, truth, threshold=0.5)
    assert captions["captions"] == 2 * SHARDS * PER_SHARD
    assert captions["correct"] >= CAPTIONS_CORRECT, captions
    assert captions["kept_correct"] >= captions["correct"], captions  # the filter prefers the right ones


@pytest.fixture(scope="module")
def suite_scores(tmp_path_factory):
    """The shapeworld suite on a small world built here with a seed training never saw."""
    from evaluation.runner import Options, run_suite
    from evaluation.suite import SUITE_DIR, load_suite
    from shapeworld.build import build_world

    world = build_world(tmp_path_factory.mktemp("world") / "w", seed=SEED, size="small")
    suite = load_suite(SUITE_DIR / "shapeworld.yaml", variables={"WORLD": str(world)},
                       tasks=["shapes_caption", "shapes_retrieval", "shapes_vqa", "shapes_nlvr2", "shapes_refcoco_testA",
                              "shapes_refcoco_testB"])
    result = run_suite(suite, Options(tmp_path_factory.mktemp("evals")), log=lambda line: None)
    ray.shutdown()
    return {(row["task"], row["metric"]): row["value"] for row in result.rows if row["status"] == "ok"}


def test_suite_scores_on_a_fresh_world(suite_scores):
    assert suite_scores[("shapes_caption", "CIDEr")] >= CIDER, suite_scores
    assert suite_scores[("shapes_retrieval", "i2t_r1")] >= RETRIEVAL_R1, suite_scores
    assert suite_scores[("shapes_retrieval", "t2i_r1")] >= RETRIEVAL_R1, suite_scores
    assert suite_scores[("shapes_vqa", "accuracy")] >= VQA_ACCURACY, suite_scores


def test_nlvr_and_grounding_models_run_where_users_call_them(suite_scores, tmp_path):
    """shapes_nlvr above chance on the fresh world's pairs; both answer inference_model on real image files. Their
    accuracy against the issue's targets (90%, not met) is in RESULTS.md, "NLVR2 and grounding"."""
    from PIL import Image

    from models.inference import inference_model
    from shapeworld.scenes import sample_mixed_scene, sample_scene, render
    import numpy as np

    assert suite_scores[("shapes_nlvr2", "accuracy")] >= NLVR_ACCURACY, suite_scores
    assert ("shapes_refcoco_testA", "mean_iou") in suite_scores and ("shapes_refcoco_testB", "accuracy") in suite_scores
    rng = np.random.default_rng(SEED)
    left, right, mixed = (tmp_path / "left.png", tmp_path / "right.png", tmp_path / "mixed.jpg")
    render(sample_scene(rng)).save(left)
    render(sample_scene(rng)).save(right)
    render(sample_mixed_scene(rng)).save(mixed)
    out = inference_model("shapes_nlvr", [str(left), str(right)], text="both images have the same number of shapes")
    assert isinstance(out["pred_label"], bool) and 0 <= out["score"] <= 1
    width, height = Image.open(mixed).size
    (box,) = inference_model("shapes_grounding", str(mixed), text="the red circle on the left")["pred_bboxes"]
    assert 0 <= box[0] <= box[2] <= width and 0 <= box[1] <= box[3] <= height
