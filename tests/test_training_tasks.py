"""Fine-tuning capfilt's NLVR2 and grounding models from a pre-trained BLIP's exports (training/model.py
TaskTrainee): the start BLIP and the toolbox take, the objectives learning one batch, the export loading as the
roles, and the job's checks. The objectives' agreement with the toolbox's own losses is in
tests/test_convert_upstream.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.grounder import Grounder
from models.reasoner import NlvrReasoner
from models.task_models import BOX_PREFIX
from shapeworld.build import ensure_world
from training.data import load_boxes, load_nlvr, pixel_values
from training.job import TrainJob, check_inputs
from training.model import BlipTrainee, GroundingTrainee, NlvrTrainee, world_config, world_tokenizer
from training.objectives import tokenize_expressions, tokenize_sentences


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world") / "w", seed=3, size="small")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A fresh tiny pre-trained model's caption and retrieval exports, as a pre-training job leaves them."""
    tokenizer = world_tokenizer()
    folder = tmp_path_factory.mktemp("base")
    trainee = BlipTrainee.create(world_config(tokenizer, "tiny"), seed=0)
    for task in ("caption", "retrieval"):
        trainee.export(task, folder / task, tokenizer)
    return {task: str(folder / task) for task in ("caption", "retrieval")}, trainee


def overfit(model, pixels, batch, name: str, steps: int = 80) -> tuple[float, float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    values = []
    model.train()
    for _ in range(steps):
        loss = model(pixels, batch)[name]
        values.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return values[0], values[-1]


def test_nlvr_starts_from_the_itm_encoder_in_both_images_attentions(base):
    roles, pretrained = base
    trainee, _ = NlvrTrainee.from_base(roles)
    layer = trainee.model.text_encoder.encoder.layer[0].crossattention
    source = pretrained.text_encoder.encoder.layer[0].crossattention
    for twin in (layer.self0, layer.self1):
        assert torch.equal(twin.query.weight, source.self.query.weight)
    for dense in (layer.output.dense0, layer.output.dense1):
        assert torch.equal(dense.weight, source.output.dense.weight)
    assert torch.equal(trainee.model.vision_model.embeddings.patch_embedding.weight,
                       pretrained.vision_model.embeddings.patch_embedding.weight)
    assert trainee.model.config.nlvr_merge_layer == 1  # tiny: 2 layers, one of each kind


def test_grounding_grows_the_vocabulary_by_the_box_tokens(base):
    roles, pretrained = base
    trainee, tokenizer = GroundingTrainee.from_base(roles)
    old = pretrained.text_decoder.bert.embeddings.word_embeddings.weight
    new = trainee.model.text_decoder.bert.embeddings.word_embeddings.weight
    assert new.shape[0] == old.shape[0] + 642 and torch.equal(new[: old.shape[0]], old)
    assert tokenizer.convert_tokens_to_ids(BOX_PREFIX) == old.shape[0]
    assert trainee.model.text_decoder.cls.predictions.decoder.weight is new  # still tied
    for encoder in (trainee.model.text_encoder, trainee.model.multimodal_encoder):
        assert torch.equal(encoder.encoder.layer[0].attention.self.query.weight,
                           pretrained.text_encoder.encoder.layer[0].attention.self.query.weight)


def test_the_objectives_learn_one_batch(base, world):
    roles, _ = base
    torch.manual_seed(0)
    nlvr, tokenizer = NlvrTrainee.from_base(roles)
    pairs = load_nlvr(world / "train/nlvr2/train.json", world / "train/nlvr2/images", 32)
    rows = np.arange(8)
    pixels = pixel_values(pairs.images[rows].reshape(-1, 32, 32, 3)).unflatten(0, (8, 2))
    batch = tokenize_sentences(tokenizer, [pairs.sentences[i] for i in rows], pairs.labels[rows])
    first, last = overfit(nlvr, pixels, batch, "nlvr")
    assert last < 0.2 * first, (first, last)
    grounding, tokenizer = GroundingTrainee.from_base(roles)
    boxes = load_boxes(world / "train/refcoco/refs(unc).json", world / "train/refcoco/instances.json",
                       world / "train/refcoco/images", 32)
    assert ((boxes.boxes >= 0) & (boxes.boxes <= 1)).all() and (boxes.boxes[:, 2:] > boxes.boxes[:, :2]).all()
    batch = tokenize_expressions(tokenizer, [boxes.expressions[i][0] for i in rows], boxes.boxes[rows])
    first, last = overfit(grounding, pixel_values(boxes.images[rows]), batch, "grounding", steps=120)
    assert last < 0.2 * first, (first, last)


def test_the_exports_load_as_the_roles(base, tmp_path):
    roles, _ = base
    image = np.full((40, 40, 3), 120, np.uint8)
    nlvr, _ = NlvrTrainee.from_base(roles)
    nlvr.export("nlvr", tmp_path / "nlvr")
    reasoner = NlvrReasoner.load(str(tmp_path / "nlvr"), precision="fp32")
    pixels = reasoner.prepare([image])
    assert 0 <= reasoner.true_probability(pixels, pixels, ["both images show a circle"])[0] <= 1
    grounding, _ = GroundingTrainee.from_base(roles)
    grounding.export("grounding", tmp_path / "grounding")
    grounder = Grounder.load(str(tmp_path / "grounding"), precision="fp32")
    assert grounder.ground(grounder.prepare([image]), ["the red circle"]).shape == (1, 4)
    with pytest.raises(ValueError, match="exports a nlvr model"):
        nlvr.export("caption", tmp_path / "x")


def test_the_jobs_check_their_data_and_start(world, tmp_path):
    nlvr = {"format": "nlvr2", "annotations": str(world / "train/nlvr2/train.json"),
            "images": str(world / "train/nlvr2/images")}
    with pytest.raises(ValueError, match="starts from a pre-trained model"):
        TrainJob(task="nlvr", data=nlvr, output=str(tmp_path / "o"), epochs=1)
    with pytest.raises(ValueError, match="the nlvr task trains on nlvr2 data"):
        TrainJob(task="caption", data=nlvr, output=str(tmp_path / "o"), epochs=1, init=str(tmp_path))
    refs = {"format": "refcoco", "refs": str(world / "train/refcoco/refs(unc).json"),
            "instances": str(world / "train/refcoco/instances.json"), "images": str(world / "train/refcoco/images"),
            "split": "val"}
    job = TrainJob(task="grounding", data=refs, output=str(tmp_path / "o"), epochs=1, init=str(world))
    from evaluation.datasets import DatasetFormatError
    with pytest.raises((DatasetFormatError, ValueError)):
        check_inputs(job)
