"""VQAv2 / OK-VQA, answer-list and OCR-VQA readers on tiny files, and their error messages."""
import json

import pytest

from evaluation.datasets import DatasetFormatError, VQARecord, read_answer_list, read_ocrvqa, read_vqa


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _vqa_files(tmp_path, subtype="val2014"):
    questions = _write(tmp_path / "questions.json", {
        "data_subtype": subtype, "task_type": "Open-Ended",
        "questions": [{"question_id": 4200, "image_id": 42, "question": "What color?"},
                      {"question_id": 700, "image_id": 7, "question": "How many?"}],
    })
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(["red"] * 9 + ["pink"])]
    annotations = _write(tmp_path / "annotations.json", {"annotations": [
        {"question_id": 700, "image_id": 7, "answers": [{"answer": "2", "answer_id": 1}],
         "answer_type": "number", "question_type": "how many", "multiple_choice_answer": "2"},
        {"question_id": 4200, "image_id": 42, "answers": answers, "answer_type": "other",
         "question_type": "what color", "multiple_choice_answer": "red"},
    ]})
    return questions, annotations


def test_vqa_questions_with_annotations(tmp_path):
    questions, annotations = _vqa_files(tmp_path)
    records = read_vqa(questions, annotations)
    assert records[0] == VQARecord(
        4200, 42, "val2014/COCO_val2014_000000000042.jpg", "What color?", tuple(["red"] * 9 + ["pink"]),
        answer_type="other", question_type="what color", multiple_choice_answer="red")
    assert records[1].answers == ("2",) and records[1].answer_type == "number"


def test_vqa_questions_alone_and_test_dev_images(tmp_path):
    questions, _ = _vqa_files(tmp_path, subtype="test-dev2015")
    records = read_vqa(questions, image_dir="coco")
    # test-dev images are test2015 images.
    assert records[0].image == "coco/test2015/COCO_test2015_000000000042.jpg"
    assert records[0].answers == () and records[0].answer_type is None
    assert read_vqa(questions, coco_split="val2014")[1].image == "val2014/COCO_val2014_000000000007.jpg"


def test_vqa_errors_name_file_and_field(tmp_path):
    questions, annotations = _vqa_files(tmp_path)
    data = json.loads(annotations.read_text())
    del data["annotations"][1]["answers"]
    _write(annotations, data)
    with pytest.raises(DatasetFormatError, match=r"annotations\.json: annotations\[1\]: missing field 'answers'"):
        read_vqa(questions, annotations)
    data["annotations"] = data["annotations"][:1]
    _write(annotations, data)
    with pytest.raises(DatasetFormatError, match=r"annotations\.json: no annotation for question_id 4200"):
        read_vqa(questions, annotations)
    no_subtype = _write(tmp_path / "q2.json", {"questions": []})
    with pytest.raises(DatasetFormatError, match=r"q2\.json: missing field 'data_subtype'; pass coco_split"):
        read_vqa(no_subtype)
    bad_id = _write(tmp_path / "q3.json", {"data_subtype": "val2014",
                                           "questions": [{"question_id": "1", "image_id": 1, "question": "?"}]})
    with pytest.raises(DatasetFormatError, match=r"q3\.json: questions\[0\]\.question_id should be an integer, got str"):
        read_vqa(bad_id)
    with pytest.raises(DatasetFormatError, match="file not found"):
        read_vqa(tmp_path / "absent.json")


def test_vqa_annotation_without_question_is_an_error(tmp_path):
    questions, annotations = _vqa_files(tmp_path)
    data = json.loads(annotations.read_text())
    data["annotations"].append({"question_id": 9, "answers": [{"answer": "x"}]})
    _write(annotations, data)
    with pytest.raises(DatasetFormatError, match=r"1 annotations have no question \(e\.g\. \[9\]\)"):
        read_vqa(questions, annotations)


def test_answer_list(tmp_path):
    assert read_answer_list(_write(tmp_path / "answer_list.json", ["yes", "no", "2"])) == ["yes", "no", "2"]
    with pytest.raises(DatasetFormatError, match=r"a\.json: \[1\] should be a string, got int"):
        read_answer_list(_write(tmp_path / "a.json", ["yes", 2]))
    with pytest.raises(DatasetFormatError, match="duplicate answers"):
        read_answer_list(_write(tmp_path / "b.json", ["yes", "yes"]))
    with pytest.raises(DatasetFormatError, match="empty"):
        read_answer_list(_write(tmp_path / "c.json", []))


def _ocrvqa(tmp_path):
    return _write(tmp_path / "dataset.json", {
        "0001": {"imageURL": "http://images.example/I/51abc.jpg", "title": "T", "split": 3,
                 "questions": ["Who wrote this book?", "Is this a comic book?"], "answers": ["Ann Lee", "No"]},
        "0002": {"imageURL": "http://images.example/I/xyz.png", "split": 1, "questions": ["Q?"], "answers": ["A"]},
    })


def test_ocrvqa_split_selection_and_image_names(tmp_path):
    path = _ocrvqa(tmp_path)
    records = read_ocrvqa(path)
    assert records == [
        VQARecord("0001_0", "0001", "0001.jpg", "Who wrote this book?", ("Ann Lee",)),
        VQARecord("0001_1", "0001", "0001.jpg", "Is this a comic book?", ("No",)),
    ]
    [train] = read_ocrvqa(path, split="train", image_dir="images")
    assert train.image == "images/0002.png"
    assert len(read_ocrvqa(path, split=None)) == 3
    with pytest.raises(ValueError, match="split"):
        read_ocrvqa(path, split="dev")


def test_ocrvqa_errors(tmp_path):
    path = _ocrvqa(tmp_path)
    data = json.loads(path.read_text())
    data["0002"]["split"] = 4
    _write(path, data)
    with pytest.raises(DatasetFormatError, match=r"dataset\.json: \['0002'\]\.split should be 1, 2 or 3"):
        read_ocrvqa(path)
    data["0002"] = {"split": 3, "questions": ["a", "b"], "answers": ["x"]}
    _write(path, data)
    with pytest.raises(DatasetFormatError, match=r"\['0002'\]: 2 questions but 1 answers"):
        read_ocrvqa(path)
    del data["0002"]["answers"]
    _write(path, data)
    with pytest.raises(DatasetFormatError, match=r"\['0002'\]: missing field 'answers'"):
        read_ocrvqa(path)
