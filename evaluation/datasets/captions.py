"""Caption references: COCO Karpathy (LAVIS JSON, Karpathy's dataset_*.json), official COCO captions, NoCaps."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from .fields import DatasetFormatError, check_kind, field, image_path, load_json, optional_field


@dataclass(frozen=True)
class CaptionRecord:
    image_id: int | str
    image: str  # relative to the image root
    references: tuple[str, ...]
    domain: str | None = None  # NoCaps: in-domain / near-domain / out-domain


_TRAILING_NUMBER = re.compile(r"(?:^|_)(\d+)$")


def _id_from_name(name: str) -> int | None:
    # COCO_val2014_000000391895.jpg -> 391895, the id the official captions files use.
    match = _TRAILING_NUMBER.search(PurePosixPath(name).stem)
    return int(match.group(1)) if match else None


def read_coco_karpathy(path, image_dir: str = "") -> list[CaptionRecord]:
    """LAVIS's coco_karpathy_{train,val,test}.json: a list of {"image", "caption": str or [str]}.

    Entries naming the same image are merged (the train file has one entry per caption). The image id
    comes from the COCO file name, so it matches the official captions file.
    """
    data = check_kind(load_json(path), list, path, "top level")
    merged: dict[str, tuple[int | str, list[str]]] = {}
    for index, item in enumerate(data):
        where = f"[{index}]"
        name = field(item, "image", str, path, where)
        caption = field(item, "caption", (str, list), path, where)
        captions = [caption] if isinstance(caption, str) else caption
        for position, text in enumerate(captions):
            check_kind(text, str, path, f"{where}.caption[{position}]")
        image_id = _id_from_name(name)
        if image_id is None:
            image_id = optional_field(item, "image_id", (int, str), path, where, default=name)
        merged.setdefault(name, (image_id, []))[1].extend(captions)
    return [CaptionRecord(image_id, image_path(image_dir, name), tuple(refs)) for name, (image_id, refs) in merged.items()]


def read_coco_captions(path, image_dir: str = "") -> list[CaptionRecord]:
    """Official COCO captions_*.json ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}).

    NoCaps ships the same layout (images also carry "domain"). Images without a caption keep an empty
    reference tuple (caption_scores refuses them by name).
    """
    data = check_kind(load_json(path), dict, path, "top level")
    images = field(data, "images", list, path, "top level")
    annotations = field(data, "annotations", list, path, "top level")
    by_id: dict[int, tuple[dict, list[str]]] = {}
    for index, image in enumerate(images):
        image_id = field(image, "id", int, path, f"images[{index}]")
        field(image, "file_name", str, path, f"images[{index}]")
        if image_id in by_id:
            raise DatasetFormatError(path, f"images[{index}]: duplicate image id {image_id}")
        by_id[image_id] = (image, [])
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        image_id = field(annotation, "image_id", int, path, where)
        caption = field(annotation, "caption", str, path, where)
        if image_id not in by_id:
            raise DatasetFormatError(path, f"{where}.image_id {image_id} is not in 'images'")
        by_id[image_id][1].append(caption)
    return [
        CaptionRecord(
            image_id,
            image_path(image_dir, image["file_name"]),
            tuple(refs),
            optional_field(image, "domain", str, path, f"images[id={image_id}]"),
        )
        for image_id, (image, refs) in by_id.items()
    ]


read_nocaps = read_coco_captions


def read_karpathy_dataset(path, split: str | None = "test", image_dir: str = "") -> list[CaptionRecord]:
    """Karpathy's dataset_flickr30k.json (also dataset_coco.json): {"images": [{"filename", "split",
    "sentences": [{"raw"}]}]}, keeping the images of `split` (None keeps all).

    The image id is "cocoid" when present, else the numeric file stem (the Flickr30k photo id).
    "filepath" (dataset_coco.json's val2014/train2014) is put before the file name.
    """
    data = check_kind(load_json(path), dict, path, "top level")
    images = field(data, "images", list, path, "top level")
    records, splits = [], set()
    for index, image in enumerate(images):
        where = f"images[{index}]"
        image_split = field(image, "split", str, path, where)
        splits.add(image_split)
        if split is not None and image_split != split:
            continue
        name = field(image, "filename", str, path, where)
        folder = optional_field(image, "filepath", str, path, where, default="")
        sentences = field(image, "sentences", list, path, where)
        refs = tuple(field(s, "raw", str, path, f"{where}.sentences[{i}]") for i, s in enumerate(sentences))
        stem = PurePosixPath(name).stem
        image_id = optional_field(image, "cocoid", int, path, where, default=int(stem) if stem.isdigit() else stem)
        records.append(CaptionRecord(image_id, image_path(image_dir, image_path(folder, name)), refs))
    if split is not None and not records:
        raise DatasetFormatError(path, f"no image has split '{split}' (splits present: {sorted(splits)})")
    return records


def retrieval_ground_truth(records: list[CaptionRecord]) -> tuple[list[str], list[int], list[list[int]]]:
    """(texts, txt2img, img2txt) for retrieval: every reference becomes a text of its record's image."""
    texts, txt2img, img2txt = [], [], []
    for image_index, record in enumerate(records):
        img2txt.append(list(range(len(texts), len(texts) + len(record.references))))
        texts.extend(record.references)
        txt2img.extend([image_index] * len(record.references))
    return texts, txt2img, img2txt
