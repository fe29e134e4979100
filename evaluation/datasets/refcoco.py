"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions: refs (the release's pickle, or JSON) plus instances.json."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .fields import DatasetFormatError, check_kind, field, image_path, load_json, optional_field
from .plain_pickle import load_plain_pickle


@dataclass(frozen=True)
class RefRecord:
    ref_id: int
    ann_id: int
    image_id: int
    image: str  # relative to the image root (COCO train2014 file names)
    sentences: tuple[str, ...]
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels, from instances.json
    split: str  # train / val / test, testA / testB (RefCOCO, RefCOCO+)
    category_id: int | None = None


def _load_refs(path) -> list:
    # The release ships refs(unc).p; it is read with an unpickler that refuses every class, so a
    # tampered file cannot run code. A JSON dump of the same list is accepted as well.
    refs = load_json(path) if Path(path).suffix.lower() == ".json" else load_plain_pickle(path)
    return check_kind(refs, list, path, "top level")


def _index_instances(path) -> tuple[dict[int, str], dict[int, dict]]:
    data = check_kind(load_json(path), dict, path, "top level")
    files = {}
    for index, image in enumerate(field(data, "images", list, path, "top level")):
        files[field(image, "id", int, path, f"images[{index}]")] = field(image, "file_name", str, path, f"images[{index}]")
    annotations = {}
    for index, annotation in enumerate(field(data, "annotations", list, path, "top level")):
        annotations[field(annotation, "id", int, path, f"annotations[{index}]")] = annotation
    return files, annotations


def _bbox(annotation: dict, path, where: str) -> tuple[float, float, float, float]:
    box = field(annotation, "bbox", list, path, where)
    if len(box) != 4:
        raise DatasetFormatError(path, f"{where}.bbox should have 4 numbers (x, y, w, h), got {len(box)}")
    values = tuple(float(check_kind(v, float, path, f"{where}.bbox[{i}]")) for i, v in enumerate(box))
    if values[2] < 0 or values[3] < 0:
        raise DatasetFormatError(path, f"{where}.bbox has a negative width or height: {list(box)}")
    return values


def read_refcoco(refs_path, instances_path, split: str | None = None, image_dir: str = "") -> list[RefRecord]:
    """One record per referred object of `split` (None keeps all), sentences from each "sent"
    (the toolbox's text; "raw" when absent), box and image file from instances.json by ann_id."""
    refs = _load_refs(refs_path)
    files, annotations = _index_instances(instances_path)
    records, splits = [], set()
    for index, ref in enumerate(refs):
        where = f"refs[{index}]"
        ref_split = field(ref, "split", str, refs_path, where)
        splits.add(ref_split)
        if split is not None and ref_split != split:
            continue
        ann_id = field(ref, "ann_id", int, refs_path, where)
        image_id = field(ref, "image_id", int, refs_path, where)
        sentences = []
        for position, sentence in enumerate(field(ref, "sentences", list, refs_path, where)):
            key = "sent" if isinstance(sentence, dict) and "sent" in sentence else "raw"
            sentences.append(field(sentence, key, str, refs_path, f"{where}.sentences[{position}]"))
        if ann_id not in annotations:
            raise DatasetFormatError(instances_path, f"no annotation with id {ann_id} (ann_id of {where} in {refs_path})")
        annotation = annotations[ann_id]
        if annotation.get("image_id", image_id) != image_id:
            raise DatasetFormatError(instances_path, f"annotation {ann_id} is on image {annotation.get('image_id')}, "
                                                     f"but {where} in {refs_path} says image {image_id}")
        if image_id not in files:
            raise DatasetFormatError(instances_path, f"no image with id {image_id} (image_id of {where} in {refs_path})")
        records.append(RefRecord(
            ref_id=field(ref, "ref_id", int, refs_path, where),
            ann_id=ann_id,
            image_id=image_id,
            image=image_path(image_dir, files[image_id]),
            sentences=tuple(sentences),
            bbox=_bbox(annotation, instances_path, f"annotations[id={ann_id}]"),
            split=ref_split,
            category_id=optional_field(ref, "category_id", int, refs_path, where),
        ))
    if split is not None and not records:
        raise DatasetFormatError(refs_path, f"no ref has split '{split}' (splits present: {sorted(splits)})")
    return records
