"""NLVR2 and RefCOCO readers on tiny files; the RefCOCO pickle is read without ever running code."""
import json
import os
import pickle

import pytest

from evaluation.datasets import (DatasetFormatError, NLVRRecord, RefRecord, load_plain_pickle, read_nlvr2,
                                 read_refcoco)


def _lines(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    return path


def test_nlvr2_image_names_from_identifier(tmp_path):
    path = _lines(tmp_path / "dev.json", [
        {"identifier": "dev-850-0-0", "sentence": "Two dogs.", "label": "True",
         "left_url": "http://x/l.jpg", "right_url": "http://x/r.jpg", "writer": "1"},
        {"identifier": "train-10171-2-1", "sentence": "No cats.", "label": "False", "directory": 67},
    ])
    dev, train = read_nlvr2(path, image_dir="nlvr2/images")
    assert dev == NLVRRecord("dev-850-0-0", "Two dogs.", True, "nlvr2/images/dev/dev-850-0-img0.png",
                             "nlvr2/images/dev/dev-850-0-img1.png", "http://x/l.jpg", "http://x/r.jpg")
    assert train.label is False
    assert (train.left_image, train.right_image) == ("nlvr2/images/train/67/train-10171-2-img0.png",
                                                     "nlvr2/images/train/67/train-10171-2-img1.png")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"sentence": "s", "label": "True"}, r"line 1: missing field 'identifier'"),
        ({"identifier": "dev-1-0", "sentence": "s", "label": "True"}, r"line 1\.identifier 'dev-1-0' is not"),
        ({"identifier": "dev-1-0-0", "sentence": "s", "label": "maybe"}, r"line 1\.label should be 'True' or 'False'"),
        ({"identifier": "dev-1-0-0", "sentence": 5, "label": "True"}, r"line 1\.sentence should be a string, got int"),
    ],
)
def test_nlvr2_errors(tmp_path, row, message):
    path = _lines(tmp_path / "dev.json", [row])
    with pytest.raises(DatasetFormatError, match=rf"dev\.json: {message}"):
        read_nlvr2(path)


def test_nlvr2_bad_json_line(tmp_path):
    path = tmp_path / "test1.json"
    path.write_text('{"identifier": "test1-0-0-0", "sentence": "s", "label": "True"}\n{oops\n')
    with pytest.raises(DatasetFormatError, match=r"test1\.json: line 2 is not valid JSON"):
        read_nlvr2(path)


REFS = [
    {"ref_id": 0, "ann_id": 1001, "image_id": 581857, "split": "testA", "category_id": 1,
     "file_name": "COCO_train2014_000000581857_1001.jpg", "sent_ids": [0, 1],
     "sentences": [{"sent": "woman in red", "raw": "Woman in red!", "sent_id": 0, "tokens": ["woman"]},
                   {"sent": "left lady", "raw": "left lady", "sent_id": 1, "tokens": ["left"]}]},
    {"ref_id": 1, "ann_id": 1002, "image_id": 581857, "split": "testB", "category_id": 3,
     "sentences": [{"raw": "Blue car", "sent_id": 2}]},
]
INSTANCES = {
    "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 480, "width": 640}],
    "annotations": [{"id": 1001, "image_id": 581857, "bbox": [103.9, 300.0, 238.2, 130.1], "category_id": 1},
                    {"id": 1002, "image_id": 581857, "bbox": [10, 20, 30, 40], "category_id": 3}],
    "categories": [{"id": 1, "name": "person"}],
}


@pytest.fixture
def refcoco(tmp_path):
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps(REFS, protocol=2))
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps(INSTANCES))
    return refs, instances


def test_refcoco_from_the_release_pickle(refcoco):
    refs, instances = refcoco
    records = read_refcoco(refs, instances, image_dir="train2014")
    assert records[0] == RefRecord(
        ref_id=0, ann_id=1001, image_id=581857, image="train2014/COCO_train2014_000000581857.jpg",
        sentences=("woman in red", "left lady"), bbox=(103.9, 300.0, 238.2, 130.1), split="testA", category_id=1)
    assert records[1].sentences == ("Blue car",) and records[1].bbox == (10.0, 20.0, 30.0, 40.0)
    assert [r.ref_id for r in read_refcoco(refs, instances, split="testB")] == [1]
    with pytest.raises(DatasetFormatError, match=r"no ref has split 'val' \(splits present: \['testA', 'testB'\]\)"):
        read_refcoco(refs, instances, split="val")


def test_refcoco_refs_as_json(refcoco, tmp_path):
    refs_json = tmp_path / "refs.json"
    refs_json.write_text(json.dumps(REFS))
    assert read_refcoco(refs_json, refcoco[1]) == read_refcoco(*refcoco)


def test_refcoco_errors_name_file_and_field(refcoco, tmp_path):
    refs, instances = refcoco
    broken = json.loads(json.dumps(INSTANCES))
    broken["annotations"][0]["bbox"] = [1, 2, 3]
    instances.write_text(json.dumps(broken))
    with pytest.raises(DatasetFormatError, match=r"instances\.json: annotations\[id=1001\]\.bbox should have 4 numbers"):
        read_refcoco(refs, instances)
    broken["annotations"] = broken["annotations"][1:]
    instances.write_text(json.dumps(broken))
    with pytest.raises(DatasetFormatError, match=r"instances\.json: no annotation with id 1001"):
        read_refcoco(refs, instances)
    refs_json = tmp_path / "refs.json"
    refs_json.write_text(json.dumps([{k: v for k, v in REFS[0].items() if k != "ann_id"}]))
    with pytest.raises(DatasetFormatError, match=r"refs\.json: refs\[0\]: missing field 'ann_id'"):
        read_refcoco(refs_json, instances)
    with pytest.raises(DatasetFormatError, match="file not found"):
        read_refcoco(tmp_path / "refs(google).p", instances)


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_with_a_class_reference_is_refused_without_running_it(tmp_path, refcoco, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "refs(unc).p"
    evil.write_bytes(pickle.dumps([{"ref_id": 0, "payload": _RunsAShellCommand(marker)}], protocol=protocol))
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\)\.p: not a plain-data pickle \(refused to load"):
        read_refcoco(evil, refcoco[1])
    assert not marker.exists()
    # The unsafe loader really would have run it: the test's payload is live.
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_python2_byte_strings_load_as_text(tmp_path):
    # PROTO 2, EMPTY_LIST, MARK, EMPTY_DICT, MARK, two SHORT_BINSTRINGs, SETITEMS, APPENDS, STOP:
    # what Python 2 writes for [{"split": "testA"}].
    path = tmp_path / "py2.p"
    path.write_bytes(b"\x80\x02](}(U\x05splitU\x05testAue.")
    assert load_plain_pickle(path) == [{"split": "testA"}]
    path.write_bytes(b"\x80\x02](}(U\x05split")
    with pytest.raises(DatasetFormatError, match="not a plain-data pickle"):
        load_plain_pickle(path)
