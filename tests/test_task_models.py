"""capfilt's NLVR2 and grounding models (models/task_models.py) and their roles, on tiny random models: batching,
one vision pass per image, saving and loading, the one-call face. Their agreement with the toolbox's own code is in
tests/test_convert_upstream.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.fixtures import PHOTOS, photo
from models.grounder import clean_expression, cxcywh_to_xyxy, xyxy_to_cxcywh
from models.inference import inference_model, load_role

PICTURES = [photo(name) for name, *_ in PHOTOS[:4]]
SENTENCES = ["the left image shows a person", "there is a cat", "two red cars near a tree"]
EXPRESSIONS = ["the man on the left", "a red cat!", "the small blue car near the tree"]


@pytest.fixture(scope="module")
def reasoner():
    return load_role("tiny-random_nlvr", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def grounder():
    return load_role("tiny-random_grounding", device="cpu", precision="fp32")


def test_nlvr_runs_each_image_once_and_batches_as_it_runs_alone(reasoner):
    images = reasoner.prepare(PICTURES)
    left, right = images[[0, 1, 2]], images[[3, 0, 1]]
    batched = reasoner.true_probability(left, right, SENTENCES)
    alone = np.concatenate([reasoner.true_probability(left[i:i + 1], right[i:i + 1], SENTENCES[i:i + 1])
                            for i in range(3)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    with torch.no_grad():  # the model's own path from pixels, the images of a pair stacked
        pixels = torch.stack([reasoner.pixel_values(left), reasoner.pixel_values(right)], dim=1)
        ids, mask = reasoner.tokenize(SENTENCES, 35)
        logits = reasoner.model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    np.testing.assert_allclose(batched, torch.softmax(logits, -1)[:, 1].numpy(), atol=1e-5)
    swapped = reasoner.true_probability(right, left, SENTENCES)
    assert not np.allclose(batched, swapped)  # left and right have their own attention
    assert reasoner.true_probability(left[:0], right[:0], []).shape == (0,)
    with pytest.raises(ValueError, match="2 left images"):
        reasoner.true_probability(left[:2], right, SENTENCES)


def test_the_nlvr_model_has_averaged_and_merged_layers(reasoner):
    layers = reasoner.model.text_encoder.encoder.layer
    assert reasoner.model.config.nlvr_merge_layer == 1
    assert [hasattr(layer.crossattention.output, "merge_layer") for layer in layers] == [False, True]


def test_boxes_are_unit_xyxy_and_batch_as_they_run_alone(grounder):
    images = grounder.prepare(PICTURES[:3])
    boxes = grounder.ground(images, EXPRESSIONS)
    assert boxes.shape == (3, 4) and boxes.dtype == np.float32
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    alone = np.concatenate([grounder.ground(images[i:i + 1], EXPRESSIONS[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(boxes, alone, atol=1e-6)
    assert grounder.ground(images[:0], []).shape == (0, 4)


def test_box_tokens_round_trip_through_the_bins(grounder):
    box = torch.tensor([[0.1, 0.2, 0.5, 0.9]])
    ids = grounder.target_ids(box)
    assert ids[0, 0] == grounder.prefix_id
    first, last = grounder.bin_range()
    assert ((ids[0, 1:] >= first) & (ids[0, 1:] <= last)).all() and last - first == 640
    back = cxcywh_to_xyxy((ids[:, 1:] - first).float() / grounder.bins)
    assert torch.allclose(back, box, atol=2 / 640)
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4]))),
                          torch.tensor([0.5, 0.5, 0.2, 0.4]))


def test_expressions_are_cleaned_as_the_toolbox_cleans_them():
    assert clean_expression("  The man, on the LEFT!  ") == "the man on the left"
    assert clean_expression("a  red   cat") == "a red cat"


def test_both_save_and_load_as_local_models(reasoner, grounder, tmp_path):
    for role, name in ((reasoner, "nlvr"), (grounder, "grounding")):
        directory = tmp_path / name
        role.model.save_pretrained(directory)
        role.tokenizer.save_pretrained(directory)
        again = load_role(str(directory), device="cpu", precision="fp32")
        assert type(again) is type(role) and again.task == name
        for key, value in role.model.state_dict().items():
            assert torch.equal(value, again.model.state_dict()[key]), key
    images = grounder.prepare(PICTURES[:2])
    np.testing.assert_array_equal(grounder.ground(images, EXPRESSIONS[:2]),
                                  load_role(str(tmp_path / "grounding"), device="cpu").ground(images, EXPRESSIONS[:2]))


def test_the_one_call_faces(tmp_path):
    from PIL import Image

    left, right = tmp_path / "left.png", tmp_path / "right.png"
    Image.fromarray(PICTURES[0]).save(left)
    Image.fromarray(PICTURES[1]).save(right)
    out = inference_model("tiny-random_nlvr", [left, right], text="the left image shows a person")
    assert set(out) == {"pred_label", "score"} and isinstance(out["pred_label"], bool)
    assert out["pred_label"] == (out["score"] > 0.5)
    picture = Image.open(left)
    box = inference_model("tiny-random_grounding", left, text="the man on the left")["pred_bboxes"]
    assert len(box) == 1 and 0 <= box[0][0] <= box[0][2] <= picture.width and 0 <= box[0][1] <= box[0][3] <= picture.height
    with pytest.raises(ValueError, match="pair of images"):
        inference_model("tiny-random_nlvr", left, text="x")
    with pytest.raises(ValueError, match="one image and its referring expression"):
        inference_model("tiny-random_grounding", left)
