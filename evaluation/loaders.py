"""Dataset formats a suite may name: which files each needs, and reading a task's records through evaluation.datasets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluation.datasets import (DatasetFormatError, read_answer_list, read_coco_captions, read_coco_karpathy,
                                 read_karpathy_dataset, read_nlvr2, read_nocaps, read_ocrvqa, read_refcoco, read_vqa)

CAPTION_TASKS = ("caption", "retrieval")


@dataclass(frozen=True)
class Format:
    task_types: tuple[str, ...]
    required: tuple[str, ...]  # annotation files (paths relative to the data root), besides the `images` folder
    optional: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # plain settings passed to the reader
    doc: str = ""


FORMATS: dict[str, Format] = {
    "coco_karpathy": Format(CAPTION_TASKS, ("annotations",), doc="LAVIS coco_karpathy_{val,test}.json"),
    "coco_captions": Format(CAPTION_TASKS, ("annotations",), doc="official COCO captions_*.json"),
    "nocaps": Format(CAPTION_TASKS, ("annotations",), doc="NoCaps nocaps_{val,test}_*.json (COCO layout)"),
    "karpathy_dataset": Format(CAPTION_TASKS, ("annotations",), doc="Karpathy dataset_flickr30k.json, filtered by split"),
    "vqa": Format(("vqa",), ("questions", "annotations"), ("answer_list",), ("coco_split",),
                  doc="VQAv2 / OK-VQA question + annotation JSON; answer_list for rank mode"),
    "ocrvqa": Format(("vqa",), ("annotations",), doc="OCR-VQA dataset.json, filtered by split"),
    "nlvr2": Format(("nlvr",), ("annotations",), doc="NLVR2 JSON lines (dev.json, test1.json)"),
    "refcoco": Format(("grounding",), ("refs", "instances"), doc="RefCOCO refs(unc).p or refs JSON + instances.json"),
}


@dataclass
class LoadedDataset:
    records: list
    candidates: list[str] | None = None  # VQA rank mode: the answer list
    total: int = 0  # records before --limit


def _read(format_name: str, files: dict[str, Path], images: str, split: str, options: dict) -> list:
    f = files
    if format_name == "coco_karpathy":
        return read_coco_karpathy(f["annotations"], images)
    if format_name == "coco_captions":
        return read_coco_captions(f["annotations"], images)
    if format_name == "nocaps":
        return read_nocaps(f["annotations"], images)
    if format_name == "karpathy_dataset":
        return read_karpathy_dataset(f["annotations"], split, images)
    if format_name == "vqa":
        return read_vqa(f["questions"], f["annotations"], options.get("coco_split"), images)
    if format_name == "ocrvqa":
        return read_ocrvqa(f["annotations"], split, images)
    if format_name == "nlvr2":
        return read_nlvr2(f["annotations"], images)
    if format_name == "refcoco":
        return read_refcoco(f["refs"], f["instances"], split, images)
    raise KeyError(format_name)


def _image_paths(record) -> list[str]:
    if hasattr(record, "left_image"):
        return [record.left_image, record.right_image]
    return [record.image]


def check_images(records: list, listed_in: Path) -> None:
    """Every image a record names exists; otherwise an error naming the first missing file and how many are."""
    missing = [p for r in records for p in _image_paths(r) if not Path(p).is_file()]
    if missing:
        raise DatasetFormatError(missing[0], f"image file not found (listed in {listed_in}; "
                                             f"{len(missing)} of the images it lists are missing)")


def load_dataset(task, limit: int | None = None) -> LoadedDataset:
    """The records of `task` (its first `limit` ones), images checked, the answer list read when ranking."""
    spec = task.dataset
    if spec.format == "ocrvqa" and task.split not in ("train", "val", "test"):
        raise DatasetFormatError(spec.files["annotations"], f"OCR-VQA split must be train, val or test, got '{task.split}'")
    if not spec.images.is_dir():
        raise DatasetFormatError(spec.images, "image folder not found")
    records = _read(spec.format, spec.files, str(spec.images), task.split, spec.options)
    main_file = spec.files[FORMATS[spec.format].required[0]]
    if not records:
        raise DatasetFormatError(main_file, f"no {task.type} records for split '{task.split}'")
    total = len(records)
    records = records[:limit] if limit else records
    check_images(records, main_file)
    candidates = None
    if task.type == "vqa" and task.protocol["mode"] == "rank":
        candidates = read_answer_list(spec.files["answer_list"])
    return LoadedDataset(records, candidates, total)
