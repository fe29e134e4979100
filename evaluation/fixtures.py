"""Small benchmark fixtures in the official formats, over scikit-image photographs: `build_fixtures(dir)`.

    python -m evaluation.fixtures DIR

The layout under DIR is the one `evaluation/suites/blip_seed_table.yaml` expects under its data root (COCO Karpathy
test JSON, NoCaps, Karpathy's dataset_flickr30k.json, VQAv2 and OK-VQA question + annotation pairs with an answer
list, OCR-VQA dataset.json, NLVR2 dev.json, RefCOCO refs + instances.json), so either suite can run on it.
A marker file written last makes `ensure_fixtures` rebuild a half-written or outdated folder.
"""
from __future__ import annotations

import json
import pickle
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

VERSION = 2  # 2: NLVR2 test1.json, a RefCOCO val ref
MARKER = "FIXTURES.json"
MAX_SIDE = 160  # the tiny models take 32 px; small files keep the build and the reads instant

# photo -> reference captions (hand-written descriptions of the scikit-image photographs)
COCO = {
    "astronaut": ["a woman astronaut in an orange suit smiling in front of a flag",
                  "portrait of a female astronaut with the american flag behind her",
                  "an astronaut posing for an official photo beside a model of the space shuttle"],
    "coffee": ["a cup of coffee on a red saucer with a spoon", "a small cup of espresso on a wooden table",
               "a red coffee cup and a silver spoon on a saucer"],
    "chelsea": ["an orange tabby cat looking to the side", "a close up of a ginger cat with white whiskers",
                "a striped cat sitting still and looking away"],
    "rocket": ["a rocket on the launch pad before lift off", "a space rocket standing next to a launch tower",
               "a tall white rocket ready for launch under a clear sky"],
    "stereo_motorcycle": ["a red motorcycle parked in a garage", "a red motorbike standing in front of shelves",
                          "a motorcycle parked on a concrete floor next to a wooden bench"],
    "coins": ["a collection of old coins on a gray background", "rows of ancient coins in black and white",
              "many small coins laid out in a grid"],
}
NOCAPS = {
    "hubble_deep_field": ("out-domain", ["a dark sky full of distant galaxies", "many small galaxies seen through a telescope"]),
    "immunohistochemistry": ("out-domain", ["a microscope image of stained tissue", "brown and blue cells under a microscope"]),
    "retina": ("near-domain", ["a photograph of the back of a human eye", "the retina of an eye with red blood vessels"]),
    "colorwheel": ("in-domain", ["a circle of rainbow colors on a white background", "a color wheel with every hue"]),
}
FLICKR = {
    "camera": ["a man looking through a camera on a tripod", "a photographer in a coat standing in a field with a camera"],
    "moon": ["the surface of the moon covered in craters", "a black and white close up of the lunar surface"],
    "brick": ["a wall made of gray bricks", "a close up of an old brick wall"],
    "gravel": ["a ground covered with small stones", "a close up of gray gravel"],
    "grass": ["a close up of long grass", "blades of grass in black and white"],
}
# (COCO photo, question, answer type, ten answers)
VQAV2 = [
    ("astronaut", "what is the woman wearing", "other", ["space suit"] * 6 + ["suit"] * 3 + ["orange suit"]),
    ("astronaut", "is there a flag", "yes/no", ["yes"] * 10),
    ("coffee", "what is in the cup", "other", ["coffee"] * 8 + ["espresso"] * 2),
    ("coffee", "how many spoons are there", "number", ["1"] * 9 + ["one"]),
    ("chelsea", "what animal is this", "other", ["cat"] * 10),
    ("chelsea", "is the cat sleeping", "yes/no", ["no"] * 8 + ["yes"] * 2),
    ("rocket", "what is this", "other", ["rocket"] * 7 + ["space shuttle"] * 2 + ["missile"]),
    ("stereo_motorcycle", "what color is the motorcycle", "other", ["red"] * 10),
    ("stereo_motorcycle", "how many wheels does the motorcycle have", "number", ["2"] * 9 + ["two"]),
    ("coins", "are these coins", "yes/no", ["yes"] * 10),
]
OKVQA = [
    ("astronaut", "what agency does this person work for", ["nasa"] * 8 + ["space agency"] * 2),
    ("coffee", "what plant do these beans come from", ["coffee"] * 6 + ["coffee plant"] * 4),
    ("chelsea", "what do these animals like to chase", ["mice"] * 6 + ["mouse"] * 2 + ["birds"] * 2),
    ("rocket", "what fuel does this vehicle burn", ["hydrogen"] * 4 + ["rocket fuel"] * 4 + ["fuel"] * 2),
    ("stereo_motorcycle", "which company made this vehicle", ["yamaha"] * 10),
    ("coins", "what metal are these made of", ["silver"] * 5 + ["copper"] * 3 + ["bronze"] * 2),
]
OCRVQA = {  # photo -> (title, author, genre) of the "book"; the questions are OCR-VQA's templates
    "page": ("Image Processing in Python", "Scikit-image Team", "Computers & Technology"),
    "text": ("Handwritten Calculus", "Unknown Author", "Science & Math"),
    "logo": ("Scikit-image Guide", "Open Source", "Computers & Technology"),
}
NLVR2 = [  # (sentence, [(left photo, right photo, label)])
    ("One image shows a cat.", [("chelsea", "coffee", True), ("rocket", "coffee", False)]),
    ("Both images show vehicles.", [("rocket", "stereo_motorcycle", True), ("astronaut", "stereo_motorcycle", False)]),
]
NLVR2_TEST = [  # test-P (test1.json)
    ("One image shows a person.", [("astronaut", "coffee", True), ("chelsea", "rocket", False)]),
]
REFCOCO = {  # photo -> [(split, sentences, box x y w h in the original photo's pixels)]
    "coffee": [("testA", ["the red cup", "coffee cup"], (170, 15, 240, 285)),
               ("testB", ["the spoon on the right"], (325, 65, 100, 265)),
               ("val", ["the saucer under the cup"], (20, 160, 560, 230))],
    "stereo_motorcycle": [("testB", ["the red motorcycle"], (95, 75, 590, 375)),
                          ("testA", ["wooden bench on the left"], (40, 105, 250, 200))],
}


# Photographs with a correct caption and an unrelated one a web page might carry: the test corpora and the
# benchmarks' shards (tests/corpus.py, benchmarks/capfilt_bench.py).
PHOTOS = [
    ("astronaut", "an astronaut in a white suit in front of a flag", "cheap flights book now"),
    ("coffee", "a cup of coffee on a saucer", "IMG_2041.JPG"),
    ("chelsea", "a tabby cat looking to the side", "best deals on car insurance"),
    ("rocket", "a rocket on a launch pad", "click here"),
    ("coins", "old coins laid out in rows", "a bowl of soup"),
    ("camera", "a man with a camera on a tripod", "DSC0001"),
    ("horse", "the silhouette of a horse", "a red sports car"),
    ("page", "a page of printed text", "sunset over the sea"),
]


def photo(name: str) -> np.ndarray:
    """A scikit-image photograph as uint8: the left view of a stereo pair, black-and-white ones as 0 / 255."""
    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
    return image.astype(np.uint8) * 255 if image.dtype == bool else image


def _save(name: str, path: Path) -> float:
    """Save a downscaled photo (JPEG, or PNG by suffix); returns the scale applied."""
    image = Image.fromarray(photo(name))
    scale = min(1.0, MAX_SIDE / max(image.size))
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.convert("RGB" if image.mode in ("RGBA", "P") else image.mode).save(path, quality=90)
    else:
        image.save(path)
    return scale


def _dump(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def _coco(root: Path, ids: dict[str, int]) -> None:
    entries = []
    for name, captions in COCO.items():
        image = f"val2014/COCO_val2014_{ids[name]:012d}.jpg"
        _save(name, root / "coco/images" / image)
        entries.append({"image": image, "caption": captions})
    _dump(root / "coco/annotations/coco_karpathy_test.json", entries)


def _nocaps(root: Path) -> None:
    images, annotations = [], []
    for n, (name, (domain, captions)) in enumerate(NOCAPS.items()):
        file_name = f"{n:04x}{'0' * 12}.jpg"
        _save(name, root / "nocaps/images/val" / file_name)
        images.append({"id": n, "file_name": file_name, "domain": domain, "open_images_id": file_name[:-4]})
        annotations += [{"image_id": n, "id": len(annotations) + i, "caption": c} for i, c in enumerate(captions)]
    _dump(root / "nocaps/annotations/nocaps_val_4500_captions.json",
          {"info": {"description": "capfilt fixture"}, "images": images, "annotations": annotations})


def _flickr(root: Path) -> None:
    images = []
    for n, (name, captions) in enumerate(FLICKR.items()):
        filename = f"{1000000 + n}.jpg"
        _save(name, root / "flickr30k/flickr30k-images" / filename)
        sentences = [{"raw": c, "tokens": c.split(), "imgid": n, "sentid": 2 * n + i} for i, c in enumerate(captions)]
        images.append({"filename": filename, "imgid": n, "split": "test", "sentences": sentences,
                       "sentids": [s["sentid"] for s in sentences]})
    _dump(root / "flickr30k/dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})


def _vqa(folder: Path, prefix: str, rows: list, ids: dict[str, int], first_qid: int) -> list[str]:
    questions, annotations, answers = [], [], []
    for n, row in enumerate(rows):
        name, question, answer_type, given = row if len(row) == 4 else (row[0], row[1], "other", row[2])
        qid, image_id = first_qid + n, ids[name]
        questions.append({"image_id": image_id, "question": question + "?", "question_id": qid})
        annotations.append({"question_id": qid, "image_id": image_id, "answer_type": answer_type,
                            "question_type": " ".join(question.split()[:2]), "multiple_choice_answer": given[0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i, a in enumerate(given)]})
        answers += given
    _dump(folder / f"{prefix}OpenEnded_mscoco_val2014_questions.json",
          {"data_type": "mscoco", "data_subtype": "val2014", "task_type": "Open-Ended", "questions": questions})
    _dump(folder / f"{prefix}mscoco_val2014_annotations.json",
          {"data_type": "mscoco", "data_subtype": "val2014", "annotations": annotations})
    return answers


def _ocrvqa(root: Path) -> None:
    data = {}
    for n, (name, (title, author, genre)) in enumerate(OCRVQA.items()):
        image_id = f"{1234567890 + n:010d}"
        _save(name, root / "ocrvqa/images" / f"{image_id}.jpg")
        data[image_id] = {"imageURL": f"http://ecx.images-amazon.com/images/I/{image_id}.jpg", "title": title,
                          "authorName": author, "genre": genre, "genreID": n, "split": 3,
                          "questions": ["Who wrote this book?", "What is the title of this book?",
                                        "What is the genre of this book?", "Is this a comedy book?"],
                          "answers": [author, title, genre, "No"]}
    _dump(root / "ocrvqa/dataset.json", data)


def _nlvr2(root: Path, split: str = "dev", file: str = "dev", examples=NLVR2) -> None:
    lines = []
    for s, (sentence, pairs) in enumerate(examples):
        for p, (left, right, label) in enumerate(pairs):
            stem = f"{split}-{850 + s}-{p}"
            _save(left, root / f"nlvr2/images/{split}" / f"{stem}-img0.png")
            _save(right, root / f"nlvr2/images/{split}" / f"{stem}-img1.png")
            lines.append({"identifier": f"{stem}-0", "sentence": sentence, "label": str(label),
                          "left_url": f"https://example.org/{left}.jpg", "right_url": f"https://example.org/{right}.jpg",
                          "synset": "fixture", "query": sentence.split()[-1]})
    path = root / f"nlvr2/{file}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def _refcoco(root: Path) -> None:
    refs, images, annotations = [], [], []
    for image_id, (name, objects) in enumerate(REFCOCO.items(), start=500001):
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        scale = _save(name, root / "coco/images/train2014" / file_name)
        small = Image.open(root / "coco/images/train2014" / file_name).size
        images.append({"id": image_id, "file_name": file_name, "width": small[0], "height": small[1]})
        for split, sentences, box in objects:
            ann_id = len(annotations) + 1
            bbox = [round(v * scale, 2) for v in box]
            annotations.append({"id": ann_id, "image_id": image_id, "bbox": bbox, "category_id": 1,
                                "area": bbox[2] * bbox[3], "iscrowd": 0})
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "split": split,
                         "category_id": 1, "file_name": file_name, "sent_ids": list(range(len(sentences))),
                         "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": i}
                                       for i, s in enumerate(sentences)]})
    _dump(root / "refcoco/refs(unc).json", refs)
    # the release's own form too (the seed table reads it): a pickle of plain lists and dicts, as refs(unc).p is
    (root / "refcoco/refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    _dump(root / "refcoco/instances.json", {"images": images, "annotations": annotations,
                                            "categories": [{"id": 1, "name": "object"}]})


def build_fixtures(root) -> Path:
    """Write every fixture dataset under `root` (replacing what is there).

    Built in a temporary sibling folder and renamed into place, marker last, so a reader never sees half a build.
    """
    root = Path(root)
    work = root.with_name(f".{root.name}.tmp-{uuid.uuid4().hex[:8]}")
    ids = {name: 100 + n for n, name in enumerate(COCO)}
    _coco(work, ids)
    _nocaps(work)
    _flickr(work)
    answers = _vqa(work / "vqav2", "v2_", VQAV2, ids, first_qid=1000)
    _vqa(work / "okvqa", "", OKVQA, ids, first_qid=2000)
    distractors = ["no", "blue", "3", "dog", "table", "airplane", "tree", "green", "water", "0"]
    _dump(work / "vqav2/answer_list.json", sorted(set(answers) | set(distractors)))
    _ocrvqa(work)
    _nlvr2(work)
    _nlvr2(work, "test1", "test1", NLVR2_TEST)
    _refcoco(work)
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    if root.exists():
        shutil.rmtree(root)
    work.rename(root)
    _dump(root / MARKER, {"version": VERSION, "files": files})
    return root


def ensure_fixtures(root) -> Path:
    """Build the fixtures under `root` unless a complete build of this version is already there."""
    marker = Path(root) / MARKER
    try:
        if json.loads(marker.read_text(encoding="utf-8")).get("version") == VERSION:
            return Path(root)
    except (OSError, ValueError):
        pass
    return build_fixtures(root)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m evaluation.fixtures DIR")
    print(build_fixtures(sys.argv[1]))
