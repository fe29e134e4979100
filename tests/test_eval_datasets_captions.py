"""Caption readers on tiny files in each official layout, and their error messages."""
import json

import pytest

from evaluation.datasets import (CaptionRecord, DatasetFormatError, read_coco_captions, read_coco_karpathy,
                                 read_karpathy_dataset, read_nocaps, retrieval_ground_truth)


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_coco_karpathy_lavis_test_and_train_layouts(tmp_path):
    test_file = _write(tmp_path / "coco_karpathy_test.json", [
        {"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["A man rides.", "a man on a bike"]},
        {"image": "val2014/COCO_val2014_000000060623.jpg", "caption": ["a girl eats"]},
    ])
    records = read_coco_karpathy(test_file)
    assert records[0] == CaptionRecord(391895, "val2014/COCO_val2014_000000391895.jpg", ("A man rides.", "a man on a bike"))
    assert records[1].image_id == 60623
    # The train file repeats the image once per caption, each with a string caption.
    train_file = _write(tmp_path / "coco_karpathy_train.json", [
        {"image": "val2014/COCO_val2014_000000391895.jpg", "caption": "first", "image_id": "coco_391895"},
        {"image": "val2014/COCO_val2014_000000391895.jpg", "caption": "second", "image_id": "coco_391895"},
    ])
    [merged] = read_coco_karpathy(train_file, image_dir="coco/images")
    assert merged.references == ("first", "second")
    assert merged.image == "coco/images/val2014/COCO_val2014_000000391895.jpg"


def test_official_coco_captions_and_nocaps(tmp_path):
    path = _write(tmp_path / "captions_val2014.json", {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}, {"id": 7, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 42, "id": 1, "caption": "a"}, {"image_id": 42, "id": 2, "caption": "b"},
                        {"image_id": 7, "id": 3, "caption": "c"}],
    })
    records = read_coco_captions(path, image_dir="val2014")
    assert records == [CaptionRecord(42, "val2014/COCO_val2014_000000000042.jpg", ("a", "b")),
                       CaptionRecord(7, "val2014/b.jpg", ("c",))]
    nocaps = _write(tmp_path / "nocaps_val_4500_captions.json", {
        "images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "out-domain"}],
        "annotations": [{"image_id": 0, "caption": "a jellyfish"}],
    })
    [record] = read_nocaps(nocaps)
    assert record.domain == "out-domain" and record.references == ("a jellyfish",)


def test_karpathy_dataset_split_selection(tmp_path):
    path = _write(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "split": "train", "sentences": [{"raw": "t1", "tokens": ["t1"]}]},
        {"filename": "1007129816.jpg", "split": "test", "sentences": [{"raw": "x"}, {"raw": "y"}]},
        {"filename": "1009434119.jpg", "split": "val", "sentences": [{"raw": "v"}]},
    ]})
    assert read_karpathy_dataset(path) == [CaptionRecord(1007129816, "1007129816.jpg", ("x", "y"))]
    assert [r.image_id for r in read_karpathy_dataset(path, split=None)] == [1000092795, 1007129816, 1009434119]
    with pytest.raises(DatasetFormatError, match=r"dataset_flickr30k.json.*no image has split 'restval'.*'test'"):
        read_karpathy_dataset(path, split="restval")
    coco = _write(tmp_path / "dataset_coco.json", {"images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "cocoid": 42, "split": "test",
         "sentences": [{"raw": "r"}]}]})
    assert read_karpathy_dataset(coco)[0] == CaptionRecord(42, "val2014/COCO_val2014_000000000042.jpg", ("r",))


def test_retrieval_ground_truth():
    records = [CaptionRecord(1, "a.jpg", ("x", "y")), CaptionRecord(2, "b.jpg", ("z",))]
    assert retrieval_ground_truth(records) == (["x", "y", "z"], [0, 0, 1], [[0, 1], [2]])


@pytest.mark.parametrize(
    ("reader", "content", "message"),
    [
        (read_coco_karpathy, {"image": "x"}, r"top level should be a list, got dict"),
        (read_coco_karpathy, [{"caption": ["a"]}], r"\[0\]: missing field 'image'"),
        (read_coco_karpathy, [{"image": "x.jpg", "caption": 3}], r"\[0\]\.caption should be a string or a list, got int"),
        (read_coco_karpathy, [{"image": "x.jpg", "caption": ["a", None]}], r"\[0\]\.caption\[1\] should be a string"),
        (read_coco_captions, {"images": []}, r"missing field 'annotations'"),
        (read_coco_captions, {"images": [{"id": "1", "file_name": "a"}], "annotations": []},
         r"images\[0\]\.id should be an integer, got str"),
        (read_coco_captions, {"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 2, "caption": "c"}]},
         r"annotations\[0\]\.image_id 2 is not in 'images'"),
        (read_coco_captions, {"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1}]},
         r"annotations\[0\]: missing field 'caption'"),
        (read_karpathy_dataset, {"images": [{"filename": "1.jpg", "split": "test", "sentences": [{"tokens": []}]}]},
         r"images\[0\]\.sentences\[0\]: missing field 'raw'"),
    ],
)
def test_malformed_files_name_the_file_and_field(tmp_path, reader, content, message):
    path = _write(tmp_path / "annotations.json", content)
    with pytest.raises(DatasetFormatError, match=message) as error:
        reader(path)
    assert str(path) in str(error.value)


def test_missing_and_invalid_json_files(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"nothing\.json: file not found"):
        read_coco_karpathy(tmp_path / "nothing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(DatasetFormatError, match=r"broken\.json: not valid JSON"):
        read_coco_captions(broken)
    assert issubclass(DatasetFormatError, ValueError)
