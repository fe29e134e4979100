"""The built shape world: deterministic files, shards that match their truth, test sets the readers load."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from evaluation.datasets import read_coco_karpathy, read_vqa
from evaluation.loaders import check_images, load_dataset
from evaluation.suite import SUITE_DIR, load_suite
from pipelines.reader import RawSample, read_shard
from shapeworld.__main__ import main
from shapeworld.build import MARKER, SIZES, build_world, ensure_world, stream
from shapeworld.captions import NOISE_KINDS, parse
from shapeworld.scenes import COLORS, COUNTS, combinations, sample_scene
from shapeworld.web import jpeg

SMALL = SIZES["small"]
ATTRIBUTES = ("shape", "color", "count", "position")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapeworld") / "world"
    main([str(root), "--size", "small", "--seed", "0"])
    return root


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(world, tmp_path):
    again = _files(build_world(tmp_path / "again", seed=0, size="small"))
    first = _files(world)
    assert first.keys() == again.keys() and all(first[k] == again[k] for k in first)
    other = _files(build_world(tmp_path / "other", seed=1, size="small"))
    for name in ("web/00000.tar", "test/coco/annotations/coco_karpathy_test.json", "test/nlvr2/dev.json",
                 "clean/annotations/train.json", "heldout/truth.parquet"):
        assert other[name] != first[name], name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_parts_draw_from_separate_streams(world, tmp_path):
    """Changing one part's size leaves every other part, and the first web shard, byte-identical."""
    smaller = _files(build_world(tmp_path / "w", seed=0, size="small", sizes={"web_shards": 1, "clean_images": 10}))
    first = _files(world)
    assert "web/00001.tar" not in smaller and smaller["web/00000.tar"] == first["web/00000.tar"]
    same = [k for k in first if k.startswith(("heldout/", "test/", "labelled/"))]
    assert same and all(smaller[k] == first[k] for k in same)
    assert smaller["clean/annotations/train.json"] != first["clean/annotations/train.json"]


def test_marker_lists_the_build_and_ensure_world_rebuilds_only_when_needed(world, tmp_path):
    marker = json.loads((world / MARKER).read_text())
    assert marker["version"] >= 1 and (marker["seed"], marker["size"]) == (0, "small")
    assert marker["sizes"]["web_per_shard"] == SMALL.web_per_shard
    assert marker["counts"]["web"] == SMALL.web_shards * SMALL.web_per_shard
    assert marker["files"] == sorted(k for k in _files(world) if k != MARKER)
    root = build_world(tmp_path / "w", seed=3, size="small")
    stamp = (root / MARKER).stat().st_mtime_ns
    assert ensure_world(root, seed=3, size="small") == root and (root / MARKER).stat().st_mtime_ns == stamp
    ensure_world(root, seed=4, size="small")
    assert json.loads((root / MARKER).read_text())["seed"] == 4
    (root / MARKER).unlink()
    ensure_world(root, seed=4, size="small")
    assert (root / MARKER).is_file()


def test_labelled_set_labels_each_image_with_its_scene(world):
    """KEY.jpg + KEY.json {"labels": {attribute: class index}} per sample, the class names in classes.json; each
    image is the scene its labels say (the scenes drawn again from the part's stream render to the same bytes)."""
    names = json.loads((world / "labelled" / "classes.json").read_text())
    assert names == {"shape": ["circle", "square", "triangle", "cross"], "color": list(COLORS),
                     "count": ["one", "two", "three"], "position": ["left", "right", "top", "bottom"]}
    rng = stream(0, "labelled")
    samples = [s for shard in range(SMALL.labelled_shards)
               for s in read_shard(str(world / "labelled" / f"{shard:05d}.tar"))]
    assert len(samples) == SMALL.labelled_shards * SMALL.labelled_per_shard
    for sample in samples:
        scene = sample_scene(rng)
        assert set(sample.members) == {"jpg", "json"} and sample.members["jpg"] == jpeg(scene)
        labels = json.loads(sample.members["json"])["labels"]
        assert {k: names[k][v] for k, v in labels.items()} == {
            "shape": scene.shape, "color": scene.color, "count": COUNTS[scene.count], "position": scene.position}


@pytest.mark.parametrize("part, shards", [("web", SMALL.web_shards), ("heldout", SMALL.heldout_shards)])
def test_truth_rows_are_the_tar_samples(world, part, shards):
    truth = pq.read_table(world / part / "truth.parquet").to_pylist()
    assert sorted(p.name for p in (world / part).glob("*.tar")) == [f"{s:05d}.tar" for s in range(shards)]
    samples = [s for shard in range(shards) for s in read_shard(str(world / part / f"{shard:05d}.tar"))]
    assert all(isinstance(s, RawSample) and s.problem is None for s in samples)
    assert len(samples) == len(truth) == shards * SMALL.web_per_shard
    for sample, row in zip(samples, truth):
        assert sample.key == row["key"] and len(row["key"]) == 9 and row["key"][:5] == row["shard"]
        assert set(sample.members) == {"jpg", "txt", "json"}
        assert sample.members["txt"].decode("utf-8") == row["caption"]
        meta = json.loads(sample.members["json"])
        assert meta["caption"] == row["caption"] and not {"noise", "true_caption", "shape"} & set(meta)
        assert Image.open(io.BytesIO(sample.members["jpg"])).size == (96, 96)
        _check_caption(row)
    noisy = sum(row["noise"] != "clean" for row in truth) / len(truth)
    assert 0.25 < noisy < 0.55 and {row["noise"] for row in truth} <= {"clean", *NOISE_KINDS}


def _check_caption(row: dict) -> None:
    parsed, truth = parse(row["caption"]), {k: row[k] for k in ATTRIBUTES}
    if row["noise"] == "empty":
        assert row["caption"] == ""
    if row["noise"] == "clean" or row["noise"].startswith("wrong_"):
        wrong = {k for k in ATTRIBUTES if parsed[k] != truth[k]}
        assert wrong == ({row["noise"].removeprefix("wrong_")} if row["noise"] != "clean" else set()), row
    assert all(parse(row["true_caption"])[k] == truth[k] for k in ATTRIBUTES)


def test_every_test_set_loads_through_the_suite(world):
    suite = load_suite(SUITE_DIR / "shapeworld.yaml", variables={"WORLD": str(world)})
    assert suite.models["captioner"] == "shapes_caption" and suite.models["filter"] == "shapes_retrieval"
    assert suite.models["answerer"] == "shapes_vqa"
    assert {t.type for t in suite.tasks} == {"caption", "retrieval", "vqa", "nlvr", "grounding"}
    loaded = {t.name: load_dataset(t) for t in suite.tasks}
    assert {t.name: t.protocol.get("k") for t in suite.tasks if t.type == "retrieval"} == {"shapes_retrieval": 16}
    caption = loaded["shapes_caption"].records
    assert len(caption) == SMALL.test_images and all(len(r.references) == 5 for r in caption)
    annotations = json.loads((world / "test/coco/annotations/coco_karpathy_test.json").read_text())
    combos = [tuple(entry[k] for k in ATTRIBUTES) for entry in annotations]
    assert len(set(combos)) == len(combos) and set(combos) <= set(combinations())
    vqa = loaded["shapes_vqa"]
    assert len(vqa.records) == SMALL.vqa_questions and len({r.image_id for r in vqa.records}) == SMALL.test_images
    assert all(a in vqa.candidates for r in vqa.records for a in r.answers)
    nlvr = loaded["shapes_nlvr2"].records
    assert len(nlvr) == SMALL.nlvr_pairs and 0.25 < sum(r.label for r in nlvr) / len(nlvr) < 0.75
    refs = loaded["shapes_refcoco_testA"].records + loaded["shapes_refcoco_testB"].records
    assert len(refs) == SMALL.refs and loaded["shapes_refcoco_testA"].records and loaded["shapes_refcoco_testB"].records
    assert all(r.bbox[2] >= 4 and r.sentences for r in refs)


def test_clean_set_loads_with_the_readers(world):
    clean = world / "clean"
    captions = read_coco_karpathy(clean / "annotations/train.json", str(clean / "images"))
    assert len(captions) == SMALL.clean_images and all(len(r.references) == 5 for r in captions)
    check_images(captions, clean / "annotations/train.json")
    vqa = read_vqa(clean / "vqa/questions.json", clean / "vqa/annotations.json", image_dir=str(clean / "images"))
    assert len(vqa) == 6 * SMALL.clean_images and {r.image for r in vqa} == {r.image for r in captions}
    check_images(vqa, clean / "vqa/questions.json")


def test_nlvr_and_refcoco_training_splits_and_the_baselines_beside_them(tmp_path):
    """The world writes NLVR2's and RefCOCO's training splits in the official formats, apart from the test sets, and
    the baselines come out of them: chance, the majority label, the centre box and the largest object."""
    from evaluation.datasets.nlvr import read_nlvr2
    from evaluation.datasets.refcoco import read_refcoco
    from shapeworld.baselines import grounding_baselines, nlvr_baselines

    world = build_world(tmp_path / "w", seed=5, size="small")
    train = read_nlvr2(world / "train/nlvr2/train.json", str(world / "train/nlvr2/images"))
    assert len(train) == 40 and all(Path(r.left_image).is_file() and r.identifier.startswith("train-") for r in train)
    refs = read_refcoco(world / "train/refcoco/refs(unc).json", world / "train/refcoco/instances.json", "train")
    assert len(refs) == 40 and all(r.split == "train" for r in refs)
    nlvr = nlvr_baselines(world)
    test = read_nlvr2(world / "test/nlvr2/dev.json")
    majority = sum(r.label for r in train) * 2 >= len(train)
    assert nlvr["majority"] == pytest.approx(100 * sum(r.label == majority for r in test) / len(test))
    grounding = grounding_baselines(world)
    assert set(grounding) == {"testA", "testB"}
    for split in grounding.values():
        assert 0 <= split["centre"] <= 100 and 0 <= split["largest"] <= 100 and split["samples"] > 0
