"""Annotated sets in the official formats evaluation/datasets reads: COCO Karpathy captions, VQAv2, NLVR2, RefCOCO;
and the labelled images that pre-train the vision encoder (the ImageNet role), as webdataset shards of KEY.jpg +
KEY.json with the image's class labels."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from shapeworld.captions import phrasings
from shapeworld.questions import answer_list, nlvr_statement, referring_expressions, vqa_questions
from shapeworld.scenes import (COLORS, COUNTS, POSITIONS, SHAPES, Scene, combinations, render, sample_mixed_scene,
                               sample_scene)
from pipelines.tars import write_tar
from shapeworld.web import JPEG_QUALITY, jpeg

REFERENCES = 5  # reference captions per image


def dump(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def save(scene: Scene, path: Path) -> None:
    """The rendered scene as JPEG (quality 90) or PNG, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": JPEG_QUALITY} if path.suffix == ".jpg" else {}
    render(scene).save(path, **options)


def coco_name(split: str, image_id: int) -> str:
    return f"{split}/COCO_{split}_{image_id:012d}.jpg"


def write_karpathy(annotations: Path, images: Path, scenes: list[Scene], split: str, first_id: int) -> list[int]:
    """Images named the COCO way under `images` plus LAVIS's Karpathy JSON (5 phrasings each); returns the ids."""
    entries, ids = [], []
    for n, scene in enumerate(scenes):
        image_id = first_id + n
        save(scene, images / coco_name(split, image_id))
        entries.append({"image": coco_name(split, image_id), "caption": phrasings(scene)[:REFERENCES],
                        "image_id": image_id, "shape": scene.shape, "color": scene.color, "count": scene.count,
                        "position": scene.position})
        ids.append(image_id)
    dump(annotations, entries)
    return ids


def write_vqa(questions_path: Path, annotations_path: Path, items: list[tuple[int, int, tuple]], split: str) -> None:
    """VQAv2 question + annotation JSON; items are (question_id, image_id, (question, answer type, answers))."""
    questions, annotations = [], []
    for qid, image_id, (question, answer_type, answers) in items:
        questions.append({"image_id": image_id, "question": question + "?", "question_id": qid})
        annotations.append({"question_id": qid, "image_id": image_id, "answer_type": answer_type,
                            "question_type": " ".join(question.split()[:2]),
                            "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i, a in enumerate(answers)]})
    dump(questions_path, {"data_type": "mscoco", "data_subtype": split, "task_type": "Open-Ended",
                          "questions": questions})
    dump(annotations_path, {"data_type": "mscoco", "data_subtype": split, "annotations": annotations})


def write_clean(root: Path, rng: np.random.Generator, count: int) -> dict:
    """The COCO-role training set: annotations/train.json, images/train2014/, vqa/ (every question of every image)."""
    scenes = [sample_scene(rng) for _ in range(count)]
    ids = write_karpathy(root / "annotations/train.json", root / "images", scenes, "train2014", first_id=1)
    items = [(image_id * 10 + k, image_id, q)
             for image_id, scene in zip(ids, scenes) for k, q in enumerate(vqa_questions(scene, rng))]
    write_vqa(root / "vqa/questions.json", root / "vqa/annotations.json", items, "train2014")
    return {"images": count, "vqa_questions": len(items)}


def label_names() -> dict[str, list[str]]:
    """The labelled set's classes per attribute, in index order."""
    return {"shape": list(SHAPES), "color": list(COLORS), "count": [COUNTS[n] for n in sorted(COUNTS)],
            "position": list(POSITIONS)}


def write_labelled(root: Path, rng: np.random.Generator, shards: int, per_shard: int) -> dict:
    """The ImageNet role: webdataset shards of KEY.jpg + KEY.json {"labels": {attribute: class index}} over group
    scenes drawn uniformly (shape, colour, count and position, each a classification), and classes.json (each
    attribute's class names in index order)."""
    names = label_names()
    for shard in range(shards):
        members = []
        for n in range(per_shard):
            scene = sample_scene(rng)
            key = f"{shard:05d}{n:04d}"
            labels = {attribute: names[attribute].index(value) for attribute, value in
                      (("shape", scene.shape), ("color", scene.color), ("count", COUNTS[scene.count]),
                       ("position", scene.position))}
            members += [(f"{key}.jpg", jpeg(scene)), (f"{key}.json", json.dumps({"labels": labels}).encode())]
        write_tar(root / f"{shard:05d}.tar", members)
    dump(root / "classes.json", names)
    return {"images": shards * per_shard, "classes": {attribute: len(v) for attribute, v in names.items()}}


def distinct_scenes(rng: np.random.Generator, count: int) -> list[Scene]:
    """`count` group scenes, each of a different combination."""
    every = combinations()
    if count > len(every):
        raise ValueError(f"at most {len(every)} test images have distinct combinations, asked for {count}")
    return [sample_scene(rng, every[i]) for i in rng.permutation(len(every))[:count]]


def write_test_captions(root: Path, scenes: list[Scene]) -> list[int]:
    return write_karpathy(root / "coco/annotations/coco_karpathy_test.json", root / "coco/images", scenes,
                          "val2014", first_id=100001)


def write_test_vqa(root: Path, scenes: list[Scene], ids: list[int], rng: np.random.Generator, count: int) -> None:
    """`count` questions, round robin over the images and, per image, over its six question kinds."""
    asked = [vqa_questions(scene, rng) for scene in scenes]
    items = []
    for j in range(count):
        i, round_ = j % len(scenes), j // len(scenes)
        if round_ >= len(asked[i]):
            raise ValueError(f"{count} questions need more than {len(scenes)} test images")
        k = (round_ + i) % len(asked[i])
        items.append((ids[i] * 10 + k, ids[i], asked[i][k]))
    folder = root / "vqa"
    write_vqa(folder / "v2_OpenEnded_mscoco_val2014_questions.json", folder / "v2_mscoco_val2014_annotations.json",
              items, "val2014")
    dump(folder / "answer_list.json", answer_list())


def _partner(left: Scene, rng: np.random.Generator) -> Scene:
    """The right image of a pair: half the time sharing one attribute with the left one."""
    right = sample_scene(rng)
    if rng.random() < 0.5:
        combo = [right.shape, right.color, right.count, right.position]
        attribute = int(rng.integers(4))
        combo[attribute] = (left.shape, left.color, left.count, left.position)[attribute]
        right = sample_scene(rng, tuple(combo))
    return right


def write_nlvr2(root: Path, rng: np.random.Generator, count: int, split: str = "dev") -> dict:
    """NLVR2 {split}.json (JSON lines) and {split}-{set}-{pair}-img{0,1}.png under images/{split}/."""
    lines, true = [], 0
    for n in range(count):
        left = sample_scene(rng)
        right = _partner(left, rng)
        sentence, label = nlvr_statement(left, right, rng)
        stem = f"{split}-{n // 4}-{n % 4}"
        save(left, root / f"images/{split}" / f"{stem}-img0.png")
        save(right, root / f"images/{split}" / f"{stem}-img1.png")
        lines.append({"identifier": f"{stem}-0", "sentence": sentence, "label": str(label),
                      "left_url": f"https://shapeworld.example/nlvr2/{stem}-img0.png",
                      "right_url": f"https://shapeworld.example/nlvr2/{stem}-img1.png",
                      "synset": "shape", "query": "shapes"})
        true += label
    (root / f"{split}.json").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return {"pairs": count, "true": true}


def write_refcoco(root: Path, images: Path, rng: np.random.Generator, count: int,
                  splits: tuple[str, ...] = ("testA", "testB")) -> dict:
    """RefCOCO refs(unc).json + instances.json over mixed scenes; images alternate between `splits` (testA and
    testB: both drawn alike, so they differ by the draw only; the world has no people-like and object-like kinds of
    referent to mirror RefCOCO's)."""
    refs, image_rows, annotations, sent_id = [], [], [], 0
    image_id = 200001
    while len(refs) < count:
        scene, split = sample_mixed_scene(rng), splits[len(image_rows) % len(splits)]
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        save(scene, images / file_name)
        image_rows.append({"id": image_id, "file_name": file_name, "width": scene.size, "height": scene.size})
        for index, thing in enumerate(scene.things):
            x0, y0, x1, y1 = thing.box
            ann_id = len(annotations) + 1
            category = SHAPES.index(thing.shape) + 1
            annotations.append({"id": ann_id, "image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "category_id": category, "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
            sentences = referring_expressions(scene, index)
            if not sentences or len(refs) >= count:
                continue
            ids = list(range(sent_id, sent_id + len(sentences)))
            sent_id += len(sentences)
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "split": split,
                         "category_id": category, "file_name": file_name, "sent_ids": ids,
                         "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": i}
                                       for i, s in zip(ids, sentences)]})
        image_id += 1
    dump(root / "refs(unc).json", refs)
    dump(root / "instances.json", {"images": image_rows, "annotations": annotations,
                                   "categories": [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]})
    return {"refs": len(refs), "images": len(image_rows)}
