"""Training: each BLIP objective lowers its loss, exports load as the roles, jobs are checked before they run."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models.answerer import Answerer
from models.captioner import Captioner
from models.loading import load_checkpoint
from models.matcher import Matcher
from shapeworld.build import ensure_world
from pipelines.tars import write_tar
from pipelines.reader import read_shard
from safetensors.torch import load_file
from training.data import load_captions, load_labelled, load_questions, load_shards, pixel_values
from training.job import FALSE_NEGATIVE_MARGIN, TrainJob, build_model, check_inputs, run_worker
from training.model import BlipTrainee, VisionClassifier, world_config, world_tokenizer
from training.objectives import _draw, losses, tokenize, tokenize_questions


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_world(tmp_path_factory.mktemp("world") / "w", seed=3, size="small")


@pytest.fixture(scope="module")
def tokenizer():
    return world_tokenizer()


def fresh(tokenizer, seed=0):
    return BlipTrainee.create(world_config(tokenizer, "tiny"), seed)


def overfit(model, batch_fn, name: str, steps: int = 120) -> tuple[float, float]:
    """Loss of `name` before and after `steps` AdamW steps on one fixed batch. ITC takes a smaller step: at 2e-3 its
    learned temperature collapses on one batch of 8 and the loss spikes after it has fallen."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4 if name == "itc" else 2e-3)
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(steps):
        pixels, batch = batch_fn()
        loss = model(pixels, batch, (name,), generator)[name]
        values.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return values[0], values[-1]


# Below what a model that ignores the image can reach on a batch of 8: ITC ln 8 (uniform over the batch); ITM the
# entropy of its 1:2 match prior; LM a fraction of its start.
BLIND = {"itc": float(np.log(8)), "itm": float(-(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3)), "lm": None}


@pytest.mark.parametrize("name", ["itc", "itm", "lm"])
def test_each_objective_lowers_its_loss(world, tokenizer, name):
    """On one batch of 8 clean pairs, each objective alone goes below what ignoring the image can give."""
    torch.manual_seed(0)
    data = load_captions(world / "clean/annotations/train.json", world / "clean/images", 32)
    rows = np.arange(8)
    pixels = pixel_values(data.images[rows])
    batch = tokenize(tokenizer, [data.texts[i][0] for i in rows])
    first, last = overfit(fresh(tokenizer), lambda: (pixels, batch), name)
    assert last < 0.8 * first, (name, first, last)
    if BLIND[name] is not None:
        assert last < 0.95 * BLIND[name], (name, last, BLIND[name])


def test_vqa_objective_lowers_its_loss(world, tokenizer):
    torch.manual_seed(0)
    data = load_questions(world / "clean/vqa/questions.json", world / "clean/vqa/annotations.json",
                          world / "clean/images", 32)
    rows = np.arange(8)
    pixels = pixel_values(data.images[rows])
    batch = tokenize_questions(tokenizer, [data.questions[i] for i in rows], [data.answers[i][0] for i in rows])
    first, last = overfit(fresh(tokenizer), lambda: (pixels, batch), "vqa")
    assert last < 0.5 * first, (first, last)


def test_classify_objective_lowers_its_loss(world, tokenizer):
    """The vision encoder's pre-training (the ImageNet role) learns one batch's classes."""
    data = load_labelled(str(world / "labelled" / "*.tar"), 32)
    rows = np.arange(8)
    pixels, labels = pixel_values(data.images[rows]), torch.from_numpy(data.labels[rows])
    model = VisionClassifier.create(world_config(tokenizer, "tiny"), data.classes(), seed=0)
    first, last = overfit(model, lambda: (pixels, labels), "classify")
    chance = float(np.log([4, 6, 3, 4]).sum())  # uniform over each attribute's classes
    assert first > 0.9 * chance and last < 0.1 * first, (first, last)


def test_labelled_shards_load_with_every_sample_accounted(world, tmp_path):
    data = load_labelled(str(world / "labelled" / "*.tar"), 32)
    assert len(data) == 200 and data.images.shape == (200, 32, 32, 3) and not data.skipped
    assert data.names == ("color", "count", "position", "shape") and data.labels.shape == (200, 4)
    assert data.classes() == {"color": 6, "count": 3, "position": 4, "shape": 4}
    image = next(iter(read_shard(str(world / "labelled" / "00000.tar")))).members["jpg"]

    def labelled(key, value):
        return [(f"{key}.jpg", image), (f"{key}.json", json.dumps({"labels": value}).encode())]

    write_tar(tmp_path / "odd.tar", labelled("a", {"shape": 2, "color": 1}) + labelled("b", {"shape": "two"})
              + labelled("c", {"shape": 1}) + [("d.jpg", image)] + labelled("e", {"color": 0, "shape": 3})
              + [("f.jpg", b"not an image"), ("f.json", b'{"labels": {"shape": 1, "color": 1}}')])
    odd = load_labelled(str(tmp_path / "odd.tar"), 32)
    assert odd.names == ("color", "shape") and odd.labels.tolist() == [[1, 2], [0, 3]]
    assert odd.skipped == {"missing_labels": 3, "not_an_image": 1}  # b: not an index; c: other names; d: none
    with pytest.raises(ValueError, match="no sample .* has class labels"):
        load_labelled(str(world / "web" / "00000.tar"), 32)


def test_a_pretraining_starts_from_a_classify_jobs_vision_encoder(tmp_path, world):
    """The classify job exports its vision encoder alone; a pre-training with it as init is a fresh model from its
    seed with that encoder; fine-tuning from it is refused, before any work, with what to do instead."""
    labelled = {"format": "webdataset", "shards": str(world / "labelled" / "*.tar")}
    vision = TrainJob(task="classify", data=labelled, output=str(tmp_path / "vit"), epochs=1, batch_size=16,
                      size="tiny", lr=2e-3)
    record = run_worker(vision, tmp_path / "vit", log=lambda line: None)
    assert record["samples"] == 200 and np.isfinite(record["history"][-1]["classify"])
    assert sorted(p.name for p in (tmp_path / "vit").iterdir()) == ["vision"]
    pretrain = TrainJob(task="pretrain", data={"format": "webdataset", "shards": str(world / "web" / "*.tar")},
                        output=str(tmp_path / "pre"), epochs=1, size="tiny", seed=5, init=str(tmp_path / "vit"))
    check_inputs(pretrain)
    model, _ = build_model(pretrain)
    exported = load_file(str(tmp_path / "vit" / "vision" / "model.safetensors"))
    assert all(torch.equal(value, exported[name]) for name, value in model.vision_model.state_dict().items())
    fresh_text = BlipTrainee.create(model.config, seed=5, tie=True).text_encoder.state_dict()
    assert all(torch.equal(value, fresh_text[name]) for name, value in model.text_encoder.state_dict().items())
    clean = {"format": "coco_karpathy", "annotations": str(world / "clean/annotations/train.json"),
             "images": str(world / "clean/images")}
    caption = TrainJob(task="caption", data=clean, output=str(tmp_path / "c"), epochs=1, init=str(tmp_path / "vit"))
    with pytest.raises(ValueError, match="holds a vision encoder alone"):
        check_inputs(caption)
    with pytest.raises(ValueError, match="holds a vision encoder alone"):  # also when it is trained in the same run
        check_inputs(dataclasses.replace(caption, init=str(tmp_path / "v2")), {str(tmp_path / "v2"): "classify"})


def test_web_shards_load_with_every_sample_accounted(world):
    data = load_shards(str(world / "web" / "*.tar"), 32)
    assert len(data) == 200 and data.images.shape == (200, 32, 32, 3) and not data.skipped
    assert all(len(texts) == 1 for texts in data.texts)
    assert "" in {texts[0] for texts in data.texts}  # the empty web captions train as empty text


def test_shards_decoded_again_only_when_they_change(world, tmp_path):
    import shutil

    shards = tmp_path / "web"
    shutil.copytree(world / "web", shards)
    first = load_shards(str(shards / "*.tar"), 32)
    assert load_shards(str(shards / "*.tar"), 32) is first  # the next job of the run reuses the decoded images
    assert load_shards(str(shards / "*.tar"), 48) is not first  # another image size is another decode
    victim = sorted(shards.glob("*.tar"))[0]
    victim.write_bytes(victim.read_bytes())  # rewritten in place (copytree kept the old modification time)
    rewritten = load_shards(str(shards / "*.tar"), 32)
    assert rewritten is not first and len(rewritten) == len(first)
    victim.unlink()
    assert len(load_shards(str(shards / "*.tar"), 32)) == 100  # a shard gone: the rest, decoded again


def test_hard_negatives_are_never_the_pair_itself_nor_an_equal_text():
    similarity = torch.randn(6, 6)
    same = torch.eye(6, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # texts 0 and 1 are equal
    for seed in range(20):
        drawn = _draw(similarity, same, torch.Generator().manual_seed(seed))
        assert all(not same[row, col] for row, col in enumerate(drawn.tolist()))
        assert all(similarity[row, col] < similarity[row, row] or same[row].all()
                   for row, col in enumerate(drawn.tolist()) if (similarity[row] < similarity[row, row]).any())


def test_hard_negatives_within_the_margin_of_the_pair_are_not_drawn():
    similarity = torch.tensor([[1.0, 0.9, 0.5, 0.2],
                               [0.1, 1.0, 0.2, 0.95],
                               [0.3, 0.4, 1.0, 0.5],
                               [0.2, 0.1, 0.3, 1.0]]) / 0.07  # ITC logits: cosine over the temperature
    same = torch.eye(4, dtype=torch.bool)
    drawn = {tuple(_draw(similarity, same, torch.Generator().manual_seed(seed), margin=0.15 / 0.07).tolist())
             for seed in range(50)}
    assert all(row[0] != 1 and row[1] != 3 for row in drawn)  # within 0.15 of their pair: likely false negatives
    without = {tuple(_draw(similarity, same, torch.Generator().manual_seed(seed)).tolist()) for seed in range(50)}
    assert any(row[0] == 1 for row in without)  # with no margin, the closest candidate is the likeliest draw


def test_filter_fine_tuning_takes_the_false_negative_margin_by_default(tmp_path, world, tokenizer):
    fresh(tokenizer).export("retrieval", tmp_path / "retrieval", tokenizer)
    clean = {"format": "coco_karpathy", "annotations": str(world / "clean/annotations/train.json"),
             "images": str(world / "clean/images")}
    job = TrainJob(task="filter", data=clean, output="out", epochs=1, init=str(tmp_path), seed=0)
    assert job.recipe().false_negative_margin == FALSE_NEGATIVE_MARGIN["filter"] > 0
    assert TrainJob(task="pretrain", data={"format": "webdataset", "shards": "x.tar"}, output="o",
                    epochs=1).recipe().false_negative_margin == 0
    with pytest.raises(ValueError, match="false_negative_margin"):
        dataclasses.replace(job, false_negative_margin=3.0).recipe()


def test_export_round_trip_runs_as_the_roles(tmp_path, world, tokenizer):
    trainee = fresh(tokenizer, seed=1)
    for task in ("caption", "retrieval", "vqa"):
        trainee.export(task, tmp_path / task, tokenizer)
        assert load_checkpoint(str(tmp_path / task)).task == task
    image = np.full((40, 40, 3), 120, np.uint8)
    captioner = Captioner.load(str(tmp_path / "caption"), precision="fp32")
    assert isinstance(captioner.caption(captioner.prepare([image]))[0], str)
    matcher = Matcher.load(str(tmp_path / "retrieval"), precision="fp32")
    assert 0.0 <= matcher.score(matcher.prepare([image]), [["a red circle on the left"]]).itm[0] <= 1.0
    answerer = Answerer.load(str(tmp_path / "vqa"), precision="fp32")
    assert isinstance(answerer.answer(answerer.prepare([image]), ["what color"])[0], str)
    back, _ = BlipTrainee.from_checkpoints({"retrieval": str(tmp_path / "retrieval"), "caption": str(tmp_path / "caption")})
    for name, value in trainee.state_dict().items():
        if name != "temp":  # ITC's temperature is a training quantity; no exported class carries it
            assert torch.equal(value, back.state_dict()[name]), name


def test_losses_of_a_batch_are_finite(world, tokenizer):
    data = load_captions(world / "clean/annotations/train.json", world / "clean/images", 32)
    out = losses(fresh(tokenizer), pixel_values(data.images[:4]), tokenize(tokenizer, [t[0] for t in data.texts[:4]]))
    assert set(out) == {"itc", "itm", "lm"} and all(torch.isfinite(v) for v in out.values())


@pytest.mark.parametrize("settings, message", [
    (dict(task="caption", data={"format": "coco_karpathy", "annotations": "a.json", "images": "i"}), "pre-trained"),
    (dict(task="pretrain", data={"format": "webdataset"}), "needs shards"),
    (dict(task="pretrain", data={"format": "csv"}), "unknown data format"),
    (dict(task="vqa", data={"format": "webdataset", "shards": "x.tar"}, init="x"), "vqa data"),
    (dict(task="classify", data={"format": "coco_karpathy", "annotations": "a.json", "images": "i"}), "labelled"),
    (dict(task="classify", data={"format": "webdataset", "shards": "x.tar"}, init="x"), "takes no init"),
    (dict(task="teach", data={"format": "webdataset", "shards": "x.tar"}), "unknown training task"),
])
def test_bad_jobs_are_refused_before_any_work(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        TrainJob(output=str(tmp_path), epochs=1, **settings)


def test_missing_data_is_one_error_line_before_ray_starts(tmp_path, capsys):
    from jobs.train import main

    code = main(["caption", "--annotations", str(tmp_path / "missing.json"), "--images", str(tmp_path),
                 "--init", str(tmp_path), "--output", str(tmp_path / "out")])
    assert code == 2 and "holds no exported model" in capsys.readouterr().err
    (tmp_path / "pre" / "caption").mkdir(parents=True)
    (tmp_path / "pre" / "caption" / "config.json").write_text("{}")
    code = main(["caption", "--annotations", str(tmp_path / "missing.json"), "--images", str(tmp_path),
                 "--init", str(tmp_path / "pre"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "missing.json" in err
    code = main(["pretrain", "--shards", str(tmp_path / "none-*.tar"), "--output", str(tmp_path / "out")])
    assert code == 2 and "no files match" in capsys.readouterr().err


def test_paths_are_made_absolute_before_the_job_leaves_the_caller(tmp_path, monkeypatch):
    """Ray Train runs the worker in a folder of its own: relative paths from the command line must be resolved in
    the caller's directory first (a relative --init once failed inside the worker)."""
    (tmp_path / "pre" / "retrieval").mkdir(parents=True)
    (tmp_path / "pre" / "retrieval" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    job = TrainJob(task="filter", data={"format": "coco_karpathy", "annotations": "w/train.json", "images": "w/img"},
                   output="out", epochs=1, init="pre").absolute()
    assert job.init == str(tmp_path / "pre") and job.output == str(tmp_path / "out")
    assert job.data == {"format": "coco_karpathy", "annotations": str(tmp_path / "w/train.json"),
                        "images": str(tmp_path / "w/img")}
    shards = TrainJob(task="pretrain", data={"format": "webdataset", "shards": "web/*.tar s3://b/{0..3}.tar"},
                      output="out", epochs=1).absolute().data["shards"]
    assert shards == f"{tmp_path}/web/*.tar s3://b/{{0..3}}.tar"


def test_a_tied_trainee_shares_encoder_and_decoder_but_self_attention(tmp_path, tokenizer):
    """BLIP's pre-training tie: one set of cross-attention and feed-forward weights, trained by ITM and LM alike; the
    exported captioner and filter still carry them each in full."""
    trainee = BlipTrainee.create(world_config(tokenizer, "tiny"), seed=0, tie=True)
    encoder, decoder = trainee.text_encoder, trainee.text_decoder.bert
    assert trainee.text_decoder.cls.predictions.decoder.weight is encoder.embeddings.word_embeddings.weight
    assert decoder.embeddings is encoder.embeddings
    for enc, dec in zip(encoder.encoder.layer, decoder.encoder.layer):
        assert dec.crossattention is enc.crossattention and dec.intermediate is enc.intermediate
        assert dec.output is enc.output and dec.attention is not enc.attention
    step = torch.optim.SGD(trainee.parameters(), lr=0.1)
    before = encoder.encoder.layer[0].crossattention.self.query.weight.detach().clone()
    loss = trainee(torch.randn(2, 3, 32, 32), tokenize(tokenizer, ["a red circle", "two blue squares"]), ("lm",))["lm"]
    loss.backward()
    step.step()
    assert not torch.equal(encoder.encoder.layer[0].crossattention.self.query.weight, before)  # LM alone moved it
    caption = trainee.export("caption", tmp_path / "caption", tokenizer)
    retrieval = trainee.export("retrieval", tmp_path / "retrieval", tokenizer)
    loaded, _ = BlipTrainee.from_checkpoints({"retrieval": str(retrieval), "caption": str(caption)})
    for name, value in trainee.state_dict().items():
        if name != "temp":
            assert torch.equal(value, loaded.state_dict()[name]), name


def test_one_ray_train_run_trains_its_jobs_in_turn_and_a_failed_job_keeps_the_ones_before(tmp_path, world):
    """fit_all pays Ray Train's start-up once for several jobs; a job may start from the output of a job before it
    in the run (not on disk until the run ends); each job reports its own checkpoint, so a job that fails inside the
    worker (here: weights that do not load) leaves the finished jobs' output in place."""
    from training.ray_train import RECORD_FILE, fit_all

    web = {"format": "webdataset", "shards": str(world / "web" / "*.tar")}
    first = TrainJob(task="pretrain", data=web, output=str(tmp_path / "first"), epochs=0.05, batch_size=16,
                     size="tiny", seed=1)
    (tmp_path / "broken" / "caption").mkdir(parents=True)
    (tmp_path / "broken" / "caption" / "config.json").write_text("{}")
    clean = {"format": "coco_karpathy", "annotations": str(world / "clean/annotations/train.json"),
             "images": str(world / "clean/images")}
    chained = TrainJob(task="caption", data=clean, output=str(tmp_path / "chained"), epochs=0.1, batch_size=16,
                       init=first.output, lr=1e-5)
    second = TrainJob(task="caption", data=clean, output=str(tmp_path / "second"), epochs=1, batch_size=16,
                      init=str(tmp_path / "broken"))
    with pytest.raises(Exception, match="has no weights"):  # the worker's error reaches the caller
        fit_all([first, chained, second], log=lambda line: None)
    record = json.loads((tmp_path / "first" / RECORD_FILE).read_text())
    assert record["job"]["seed"] == 1 and record["history"]
    assert load_checkpoint(str(tmp_path / "first" / "retrieval")).task == "retrieval"  # exported roles load
    captioner = Captioner.load(str(tmp_path / "first" / "caption"), precision="fp32")
    assert isinstance(captioner.caption(captioner.prepare([np.full((40, 40, 3), 120, np.uint8)]))[0], str)
    assert not (tmp_path / "second" / RECORD_FILE).exists()
    # the chained job fine-tuned the first one's weights, a few small steps away from them
    assert json.loads((tmp_path / "chained" / RECORD_FILE).read_text())["job"]["init"] == first.output
    before = load_checkpoint(str(tmp_path / "first" / "caption")).model.state_dict()
    after = load_checkpoint(str(tmp_path / "chained" / "caption")).model.state_dict()
    moved = max((after[name].float() - value.float()).abs().max().item() for name, value in before.items())
    assert 0 < moved < 0.01


def test_a_job_may_start_only_from_a_model_on_disk_or_an_earlier_job_of_the_run(tmp_path, world):
    from training.ray_train import fit_all

    clean = {"format": "coco_karpathy", "annotations": str(world / "clean/annotations/train.json"),
             "images": str(world / "clean/images")}
    later = TrainJob(task="caption", data=clean, output=str(tmp_path / "b"), epochs=1, init=str(tmp_path / "a"))
    earlier = TrainJob(task="pretrain", data={"format": "webdataset", "shards": str(world / "web" / "*.tar")},
                       output=str(tmp_path / "a"), epochs=1)
    with pytest.raises(ValueError, match="holds no exported model"):  # refused in the caller, before Ray starts
        fit_all([later, earlier], log=lambda line: None)
