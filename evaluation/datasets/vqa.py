"""VQA questions and answers: VQAv2 / OK-VQA official JSON pairs, LAVIS answer lists, OCR-VQA dataset.json."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .fields import DatasetFormatError, check_kind, field, image_path, load_json, optional_field


@dataclass(frozen=True)
class VQARecord:
    question_id: int | str
    image_id: int | str
    image: str  # relative to the image root
    question: str
    answers: tuple[str, ...]  # one per annotator (10 in VQAv2 / OK-VQA); empty when unlabelled
    answer_type: str | None = None
    question_type: str | None = None
    multiple_choice_answer: str | None = None


def _coco_folder(subtype: str) -> str:
    # test-dev questions are a subset of the test2015 images and live in that folder.
    return subtype.replace("test-dev", "test")


def read_vqa(questions_path, annotations_path=None, coco_split: str | None = None,
             image_dir: str = "") -> list[VQARecord]:
    """Official VQAv2 / OK-VQA files: {"questions": [{"question_id", "image_id", "question"}]} and, when
    given, {"annotations": [{"question_id", "answers": [{"answer"}], "answer_type", ...}]}.

    Images follow the COCO convention "{split}/COCO_{split}_{image_id:012d}.jpg", split (e.g. "val2014")
    from `coco_split` or else the questions file's "data_subtype".
    """
    data = check_kind(load_json(questions_path), dict, questions_path, "top level")
    questions = field(data, "questions", list, questions_path, "top level")
    if coco_split is None:
        if "data_subtype" not in data:
            raise DatasetFormatError(questions_path, "missing field 'data_subtype'; pass coco_split (e.g. 'val2014')")
        coco_split = field(data, "data_subtype", str, questions_path, "top level")
    folder = _coco_folder(coco_split)

    labels = _read_vqa_annotations(annotations_path) if annotations_path is not None else None
    records, seen = [], set()
    for index, question in enumerate(questions):
        where = f"questions[{index}]"
        qid = field(question, "question_id", int, questions_path, where)
        image_id = field(question, "image_id", int, questions_path, where)
        text = field(question, "question", str, questions_path, where)
        if qid in seen:
            raise DatasetFormatError(questions_path, f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        name = posixpath.join(folder, f"COCO_{folder}_{image_id:012d}.jpg")
        extra = {"answers": ()}  # unlabelled (e.g. test-dev)
        if labels is not None:
            if qid not in labels:
                raise DatasetFormatError(annotations_path, f"no annotation for question_id {qid}")
            extra = labels[qid]
            if extra.pop("image_id", image_id) != image_id:
                raise DatasetFormatError(annotations_path, f"question_id {qid}: image_id differs from the questions file")
        records.append(VQARecord(qid, image_id, image_path(image_dir, name), text, **extra))
    if labels is not None and len(labels) != len(seen):
        unknown = sorted(set(labels) - seen)
        raise DatasetFormatError(annotations_path, f"{len(unknown)} annotations have no question (e.g. {unknown[:5]})")
    return records


def _read_vqa_annotations(path) -> dict[int, dict]:
    data = check_kind(load_json(path), dict, path, "top level")
    annotations = field(data, "annotations", list, path, "top level")
    labels = {}
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        qid = field(annotation, "question_id", int, path, where)
        if qid in labels:
            raise DatasetFormatError(path, f"{where}: duplicate question_id {qid}")
        answers = field(annotation, "answers", list, path, where)
        if not answers:
            raise DatasetFormatError(path, f"{where}.answers is empty")
        labels[qid] = {
            "answers": tuple(field(a, "answer", str, path, f"{where}.answers[{i}]") for i, a in enumerate(answers)),
            "answer_type": optional_field(annotation, "answer_type", str, path, where),
            "question_type": optional_field(annotation, "question_type", str, path, where),
            "multiple_choice_answer": optional_field(annotation, "multiple_choice_answer", str, path, where),
        }
        if "image_id" in annotation:
            labels[qid]["image_id"] = field(annotation, "image_id", int, path, where)
    return labels


def read_answer_list(path) -> list[str]:
    """The candidate answers VQAv2 ranks over (LAVIS's answer_list.json: a JSON list of strings)."""
    answers = check_kind(load_json(path), list, path, "top level")
    if not answers:
        raise DatasetFormatError(path, "the answer list is empty")
    for index, answer in enumerate(answers):
        check_kind(answer, str, path, f"[{index}]")
    if len(set(answers)) != len(answers):
        duplicates = sorted({a for a in answers if answers.count(a) > 1})
        raise DatasetFormatError(path, f"duplicate answers (e.g. {duplicates[:5]})")
    return answers


_OCRVQA_SPLITS = {1: "train", 2: "val", 3: "test"}


def read_ocrvqa(path, split: str | None = "test", image_dir: str = "") -> list[VQARecord]:
    """OCR-VQA dataset.json: {image_id: {"questions": [...], "answers": [...], "split": 1|2|3, "imageURL"}}.

    One record per question (question_id "{image_id}_{n}"). Images are named as the official download
    script saves them: the image id plus the extension of imageURL.
    """
    if split not in (None, *_OCRVQA_SPLITS.values()):
        raise ValueError(f"split must be one of {list(_OCRVQA_SPLITS.values())} or None, got {split!r}")
    data = check_kind(load_json(path), dict, path, "top level")
    records = []
    for image_id, entry in data.items():
        where = f"[{image_id!r}]"
        code = field(entry, "split", int, path, where)
        if code not in _OCRVQA_SPLITS:
            raise DatasetFormatError(path, f"{where}.split should be 1, 2 or 3, got {code}")
        if split is not None and _OCRVQA_SPLITS[code] != split:
            continue
        questions = field(entry, "questions", list, path, where)
        answers = field(entry, "answers", list, path, where)
        if len(questions) != len(answers):
            raise DatasetFormatError(path, f"{where}: {len(questions)} questions but {len(answers)} answers")
        url = optional_field(entry, "imageURL", str, path, where, default="")
        extension = posixpath.splitext(url)[1] or ".jpg"
        for n, (question, answer) in enumerate(zip(questions, answers)):
            check_kind(question, str, path, f"{where}.questions[{n}]")
            check_kind(answer, str, path, f"{where}.answers[{n}]")
            records.append(VQARecord(f"{image_id}_{n}", image_id, image_path(image_dir, image_id + extension),
                                     question, (answer,)))
    return records
