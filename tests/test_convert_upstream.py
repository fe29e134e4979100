"""Converted upstream checkpoints give the upstream code's own outputs.

Each folder of tests/fixtures/upstream/ holds a tiny model built and run by the upstream code itself (LAVIS, the
toolbox), in its own environment, by scripts/upstream/*_fixtures.py: its `.pth` as that code saves it, and what that
code computed on four scikit-image photographs (expected.json). Here each is converted by capfilt and run by
capfilt's roles: captions and answers must be identical, scores within SCORE_TOLERANCE.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch

from models.convert import convert
from models.inference import load_role

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
PHOTOS = Path(skimage.__file__).parent / "data"
# fp32 on both sides; what remains is summation order (the ViT's fused attention, BERT's) and the images' resize
SCORE_TOLERANCE = 2e-5
HEAD_DIM = 8  # every fixture's attention heads are 8 wide (tests/fixtures/upstream/README.md)
CASES = sorted(path.parent.name for path in FIXTURES.glob("*/expected.json"))


def case_of(task: str, family: str = "blip") -> list[str]:
    return [name for name in CASES if name.endswith(f"-{task}") and ("blip2" in name) == (family == "blip2")]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (expected outputs, the converted directory), each fixture converted once."""
    cache: dict[str, tuple[dict, Path]] = {}

    def get(name: str):
        if name not in cache:
            folder = FIXTURES / name
            expected = json.loads((folder / "expected.json").read_text())
            out = tmp_path_factory.mktemp(name) / "hf"
            # a BLIP-2 captioner's tokenizer is its OPT's: beside the .pth (LAVIS), or in the OPT directory the
            # toolbox needs anyway (it never saves the language model)
            # (LAVIS's Flan-T5: its config and tokenizer in t5/, a directory as a user has it; the weights in the .pth)
            language_model = next((folder / lm for lm in ("opt", "t5") if (folder / lm).is_dir()), None)
            # beside the .pth: the OPT captioners' tokenizers, and grounding's vocabulary with BERT's [unused] tokens
            tokenizer = folder if "opt-caption" in name or name.endswith("-grounding") else FIXTURES
            record = convert(folder / "model.pth", out, tokenizer=None if language_model else tokenizer,
                             head_dim=HEAD_DIM, language_model=language_model,
                             task="vqa" if name.endswith("-vqa") and "blip2" in name else None)
            assert record.layout == expected["source"]
            cache[name] = expected, out, record
        return cache[name]

    return get


def assert_close(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got), np.array(want), atol=SCORE_TOLERANCE, rtol=0)


def photos(expected: dict, role) -> np.ndarray:
    """The photographs upstream read, resized as capfilt resizes (BLIP's bicubic)."""
    files = [next(PHOTOS.glob(f"{name}.*")) for name in expected["photos"]]  # rocket is a .jpg, the rest .png
    return role.prepare(files)


def transformers_beam_captions(captioner, expected) -> list[str]:
    """What transformers 5's generate(num_beams=...) gives on the same model and inputs."""
    settings = expected["settings"]
    states = captioner.encode_images(photos(expected, captioner))
    ids = captioner.prompt_ids(settings["prompt"], states.shape[0])
    out = captioner.model.text_decoder.generate(
        input_ids=ids, encoder_hidden_states=states, num_beams=settings["num_beams"], do_sample=False,
        max_length=settings["max_length"], min_length=settings["min_length"], eos_token_id=captioner.sep_id,
        pad_token_id=captioner.pad_id)
    return captioner.strip_prompt(out[:, 1:], settings["prompt"])


def transformers_beam_answers(answerer, expected) -> list[str]:
    generate = expected["settings"]["generate"]
    states, mask = answerer.encode_questions(photos(expected, answerer), expected["questions"])
    start = torch.full((states.shape[0], 1), answerer.bos_id)
    out = answerer.model.text_decoder.generate(
        input_ids=start, encoder_hidden_states=states, encoder_attention_mask=torch.ones_like(mask),
        num_beams=generate["num_beams"], max_length=generate["max_len"], min_length=generate["min_len"],
        do_sample=False, eos_token_id=answerer.sep_id, pad_token_id=answerer.pad_id)
    return answerer.decode(out[:, 1:])


@pytest.mark.parametrize("name", case_of("caption"))
def test_captions_are_the_upstream_captions(converted, name):
    """Identical beam captions: BLIP's beam scoring (whole-length normalisation), BLIP's decoded form, the ViT's eps."""
    expected, directory, record = converted(name)
    captioner = load_role(str(directory), "caption", device="cpu", precision="fp32")
    settings = expected["settings"]
    got = captioner.caption(photos(expected, captioner), prompt=settings["prompt"], num_beams=settings["num_beams"],
                            max_length=settings["max_length"], min_length=settings["min_length"],
                            repetition_penalty=settings["repetition_penalty"], beam_rule=expected["source"])
    assert got == expected["captions"]
    assert captioner.model.config.vision_config.layer_norm_eps == 1e-6
    if expected["source"] == "lavis":
        # its decoder's output bias favours the apostrophe: without BLIP's clean-up these captions would read
        # "man ' s", not "man's"
        raw = [captioner.tokenizer.decode(ids[1:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
               [len(settings["prompt"]):].strip() for ids in expected["caption_ids"]]
        assert raw != expected["captions"]
    # the end token's output bias makes beams finish at different lengths, and transformers 5's own beam scoring
    # (divided by the new tokens) picks other captions on these weights
    assert transformers_beam_captions(captioner, expected) != expected["captions"]
    assert any("eps 1e-06" in fix for fix in record.fixes)


@pytest.mark.parametrize("name", case_of("retrieval"))
def test_itm_and_itc_are_the_upstream_scores(converted, name):
    expected, directory, record = converted(name)
    matcher = load_role(str(directory), "retrieval", device="cpu", precision="fp32")
    texts = expected["texts"]
    images = photos(expected, matcher)
    scores = matcher.score(images, [texts] * len(images))
    shape = (len(images), len(texts))
    assert_close(scores.itm.reshape(shape), expected["itm"])
    assert_close(scores.itc.reshape(shape), expected["itc"])
    assert_close(scores.image_embeddings, expected["image_embeds"])
    # at transformers' default ViT eps (1e-5) the scores leave the tolerance: the converter's 1e-6 is needed
    for module in matcher.model.vision_model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-5
    default_eps = matcher.score(images, [texts] * len(images))
    assert np.abs(default_eps.itc.reshape(shape) - np.array(expected["itc"])).max() > SCORE_TOLERANCE
    # the momentum encoders, queues and temperature were dropped on purpose, each with its reason
    dropped = record.dropped
    assert dropped and all(reason for reason in dropped.values())
    assert any("_m." in key for key in dropped) and any("queue" in key for key in dropped)


@pytest.mark.parametrize("name", case_of("vqa"))
def test_vqa_answers_are_the_upstream_answers(converted, name):
    expected, directory, _ = converted(name)
    answerer = load_role(str(directory), "vqa", device="cpu", precision="fp32")
    images, questions = photos(expected, answerer), expected["questions"]
    settings = expected["settings"]
    generate = settings.get("generate", settings)
    # upstream decodes with an all-ones mask over the padded questions (capfilt's default masks the padding)
    got = answerer.answer(images, questions, num_beams=generate["num_beams"], max_length=generate["max_len"],
                          min_length=generate["min_len"], attend_padding=True, beam_rule=expected["source"])
    assert got == expected["answers_generate"]
    assert transformers_beam_answers(answerer, expected) != expected["answers_generate"]
    if expected["source"] == "toolbox":  # its transformers (4.33) stops one token later than BLIP's (4.15)
        assert answerer.answer(images, questions, attend_padding=True, beam_rule="blip") != expected["answers_generate"]
    # each question alone has no padding: the default gives upstream's answer too
    alone = [answerer.answer(images[i:i + 1], questions[i:i + 1], num_beams=generate["num_beams"],
                             max_length=generate["max_len"], min_length=generate["min_len"],
                             beam_rule=expected["source"])[0]
             for i in range(len(questions))]
    longest = max(range(len(questions)), key=lambda i: len(answerer.tokenizer(questions[i])["input_ids"]))
    assert alone[longest] == expected["answers_generate"][longest]
    ranked = answerer.rank(images, questions, expected["candidates"], k=expected["k_test"])
    assert ranked == expected["answers_rank"]


@pytest.mark.parametrize("name", case_of("retrieval", "blip2"))
def test_blip2_itm_and_itc_are_the_upstream_scores(converted, name):
    """BLIP-2's Q-Former filter: ITM (softmax of the query-averaged logits), ITC (the best query), embeddings."""
    expected, directory, record = converted(name)
    matcher = load_role(str(directory), "retrieval", device="cpu", precision="fp32")
    texts = expected["texts"]
    images = photos(expected, matcher)
    scores = matcher.score(images, [texts] * len(images))
    shape = (len(images), len(texts))
    assert_close(scores.itm.reshape(shape), expected["itm"])
    assert_close(scores.itc.reshape(shape), expected["itc"])
    _, queries = matcher.image_features(images)
    assert_close(queries.numpy(), expected["image_embeds"])
    assert_close(matcher.text_embeddings(texts).numpy(), expected["text_embeds"])
    if "itm_toolbox_score" in expected:  # the toolbox ranks by the raw "match" logit averaged over the queries
        states, _ = matcher.image_features(images)
        index = torch.arange(len(images)).repeat_interleave(len(texts))
        logit = matcher.itm(states, texts * len(images), image_index=index, logit=True)
        assert_close(logit.numpy().reshape(shape), expected["itm_toolbox_score"])
    # EVA's split q/v biases were joined, the Q-Former's language-modelling head and temp dropped with reasons
    assert any("q_bias and v_bias" in fix for fix in record.fixes)
    assert any(".cls." in key for key in record.dropped) and "temp" in record.dropped
    assert matcher.model.vision_model.post_layernorm.eps == 1e-5  # upstream's ln_vision, not the ViT's 1e-6


@pytest.mark.parametrize("name", case_of("opt-caption", "blip2"))
def test_blip2_captions_are_the_upstream_captions(converted, name):
    """BLIP-2 OPT captions, beam 5, from the converted ViT, Q-Former, projection and OPT (the toolbox's from the OPT
    directory it needs beside the .pth), beams scored as each upstream's transformers scored them."""
    expected, directory, record = converted(name)
    captioner = load_role(str(directory), "caption", device="cpu", precision="fp32")
    settings = expected["settings"]
    assert captioner.eos_id == settings.get("eos_token_id", expected.get("eos_token_id"))
    # min_length counts what the beam rule counts: LAVIS's prompt tokens, the toolbox's start placeholder
    counted = len(expected["prompt_ids"]) if expected["source"] == "lavis" else 1
    got = captioner.caption(photos(expected, captioner), prompt="a photo of", num_beams=settings["num_beams"],
                            max_new_tokens=settings["max_new_tokens"], min_new_tokens=settings["min_length"] - counted,
                            beam_rule=expected["source"])
    assert got == [caption.strip() for caption in expected["captions"]]
    # "\n" made likely (NEWLINE_END), beams finish at different lengths: transformers 5's beam scoring (over the
    # new tokens) and the other upstream's pick other captions
    for rule in (None, {"lavis": "toolbox", "toolbox": "lavis"}[expected["source"]]):
        assert captioner.caption(photos(expected, captioner), num_beams=settings["num_beams"],
                                 max_new_tokens=settings["max_new_tokens"],
                                 min_new_tokens=settings["min_length"] - counted, beam_rule=rule) != got
    if expected["source"] == "toolbox":  # its configs read the ViT's last layer but one
        assert any("out_indices=-2" in reason for reason in record.dropped.values())
        assert captioner.model.config.vision_config.num_hidden_layers == expected["config"]["vision_backbone"][
            "arch"]["num_layers"] - 1


def test_the_job_runs_on_the_pth_files_themselves(tmp_path):
    """`jobs/capfilt.py --captioner FILE.pth --filter FILE.pth`, as a user runs it: each file converted once into
    the cache (keyed by its hash), the tokenizer found beside the files, and the rows those models give."""
    import os
    import subprocess
    import sys

    import duckdb

    from models.captioner import Captioner
    from tests.corpus import build_demo_shards

    seeds = tmp_path / "downloads"
    seeds.mkdir()
    for name in ("caption", "retrieval"):
        (seeds / f"lavis-{name}.pth").write_bytes((FIXTURES / f"lavis-{name}" / "model.pth").read_bytes())
    (seeds / "vocab.txt").write_text((FIXTURES / "vocab.txt").read_text())
    shards = build_demo_shards(tmp_path / "shards", shards=1, per_shard=4, broken=False)
    env = dict(os.environ, CAPFILT_CACHE=str(tmp_path / "cache"), CAPFILT_HEAD_DIM="8")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "jobs/capfilt.py", "--input", str(shards[0]), "--output", str(out),
                           "--captioner", str(seeds / "lavis-caption.pth"), "--filter",
                           str(seeds / "lavis-retrieval.pth"), "--num-captions", "2", "--precision", "fp32"],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    conversions = sorted((tmp_path / "cache" / "converted").iterdir())
    assert sorted(p.name.rsplit("-", 1)[1] for p in conversions) == ["caption", "retrieval"]
    rows = duckdb.sql(f"SELECT key, status, synthetic FROM read_parquet('{out}/shards/*.parquet') ORDER BY key") \
        .to_arrow_table().to_pylist()
    assert len(rows) == 4 and all(r["status"] == "ok" and len(r["synthetic"]) == 2 for r in rows)
    # the same rows as the converted directories named directly, in one process
    from pipelines.config import CapFiltConfig
    from pipelines.local_runner import run_local
    from pipelines.stage import Sampling

    by_task = {p.name.rsplit("-", 1)[1]: str(p) for p in conversions}
    again = tmp_path / "again"
    run_local(CapFiltConfig(input=str(shards[0]), output=str(again), captioner=by_task["caption"],
                            filter=by_task["retrieval"], sampling=Sampling(num_captions=2), precision="fp32"), log=None)
    direct = duckdb.sql(f"SELECT key, status, synthetic FROM read_parquet('{again}/shards/*.parquet') ORDER BY key") \
        .to_arrow_table().to_pylist()
    assert rows == direct


def test_the_job_runs_on_blip2_pth_files_with_their_language_model(tmp_path):
    """BLIP-2 CapFilt on the toolbox's .pth files, as a user runs it: the captioner's OPT (which the toolbox does
    not save) named by $CAPFILT_LANGUAGE_MODEL, the Q-Former's BERT vocabulary beside the filter's file."""
    import os
    import subprocess
    import sys

    import duckdb

    from tests.corpus import build_demo_shards

    seeds = tmp_path / "downloads"
    seeds.mkdir()
    for name in ("opt-caption", "retrieval"):
        (seeds / f"blip2-{name}.pth").write_bytes((FIXTURES / f"toolbox-blip2-{name}" / "model.pth").read_bytes())
    (seeds / "vocab.txt").write_text((FIXTURES / "vocab.txt").read_text())
    shards = build_demo_shards(tmp_path / "shards", shards=1, per_shard=3, broken=False)
    env = dict(os.environ, CAPFILT_CACHE=str(tmp_path / "cache"), CAPFILT_HEAD_DIM=str(HEAD_DIM),
               CAPFILT_LANGUAGE_MODEL=str(FIXTURES / "toolbox-blip2-opt-caption" / "opt"))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "jobs/capfilt.py", "--input", str(shards[0]), "--output", str(out),
                           "--captioner", str(seeds / "blip2-opt-caption.pth"), "--filter",
                           str(seeds / "blip2-retrieval.pth"), "--num-captions", "2", "--precision", "fp32"],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = duckdb.sql(f"SELECT status, synthetic FROM read_parquet('{out}/shards/*.parquet')").to_arrow_table() \
        .to_pylist()
    assert len(rows) == 3 and all(r["status"] == "ok" and len(r["synthetic"]) == 2 for r in rows)
    assert all(0 <= s["itm"] <= 1 and s["text"] for r in rows for s in r["synthetic"])


@pytest.mark.parametrize("name", case_of("opt-vqa", "blip2"))
def test_blip2_answers_are_the_upstream_answers(converted, name):
    """The toolbox's zero-shot BLIP-2 VQA (its captioner's checkpoint, converted with --task vqa): prompts of
    different lengths padded on the left after the queries, beam 5, length penalty -1, the toolbox's beam rule."""
    expected, directory, record = converted(name)
    answerer = load_role(str(directory), "vqa", device="cpu", precision="fp32")
    settings = expected["settings"]
    images = photos(expected, answerer)
    got = answerer.answer(images, expected["questions"], num_beams=settings["num_beams"],
                          max_new_tokens=settings["max_new_tokens"], min_new_tokens=settings["min_length"] - 1)
    assert got == expected["answers"] == expected["answers_one_by_one"]  # the left padding changes nothing
    # its VQA config, too, reads the ViT's last layer but one (converted with both layers, 2 of 4 answers differed)
    assert any("out_indices=-2" in reason for reason in record.dropped.values())
    assert answerer.model.config.vision_config.num_hidden_layers == 1


@pytest.mark.parametrize("name", case_of("t5-caption", "blip2"))
def test_blip2_flan_t5_captions_are_the_upstream_captions(converted, name):
    """LAVIS's Blip2T5: the converted Flan-T5 runs the exact gelu LAVIS sets (its config's own is gelu_new, which
    T5Config would restore on loading), and captions decode with the clean-up LAVIS's transformers did."""
    expected, directory, record = converted(name)
    captioner = load_role(str(directory), "caption", device="cpu", precision="fp32")
    settings = expected["settings"]
    images = photos(expected, captioner)
    # LAVIS's min_length counts the decoder's start token
    got = captioner.caption(images, prompt=settings["prompt"], num_beams=settings["num_beams"],
                            max_new_tokens=settings["max_new_tokens"], min_new_tokens=settings["min_length"] - 1)
    assert got == expected["captions"]
    feed_forward = captioner.model.language_model.encoder.block[0].layer[1].DenseReluDense
    assert isinstance(feed_forward.act, torch.nn.Module) and captioner.model.config.text_config.dense_act_fn == "gelu"
    assert any("dense_act_fn gelu" in fix for fix in record.fixes)
    # without the clean-up, one caption keeps a space before its full stop
    raw = [captioner.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in expected["caption_ids"]]
    assert raw != expected["captions"]
    # at the config's own gelu_new the language model's outputs move: the override matters
    from transformers.activations import ACT2FN

    ids, mask = captioner.input_ids([settings["prompt"]])
    embeds = captioner.model.language_model.get_input_embeddings()(ids)
    start = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        exact = captioner.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                               decoder_input_ids=start).logits
        for block in captioner.model.language_model.modules():
            if hasattr(block, "wi_0"):
                block.act = ACT2FN["gelu_new"]
        tanh = captioner.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                              decoder_input_ids=start).logits
    assert (exact - tanh).abs().max() > SCORE_TOLERANCE


@pytest.mark.parametrize("name", case_of("nlvr"))
def test_nlvr_scores_are_the_upstream_scores(converted, name):
    expected, directory, record = converted(name)
    assert record.task == "nlvr"
    reasoner = load_role(str(directory), device="cpu", precision="fp32")
    images = photos(expected, reasoner)
    left = images[[a for a, _ in expected["pairs"]]]
    right = images[[b for _, b in expected["pairs"]]]
    got = reasoner.true_probability(left, right, expected["sentences"])
    assert_close(got, [score[1] for score in expected["scores"]])
    labels = [int(p["pred_label"]) for p in reasoner.predict(left, right, expected["sentences"])]
    assert labels == expected["labels"]
    # both kinds of layer are in it: averaged (0-5) and merged (6, 7), as the toolbox hard-codes
    assert reasoner.model.config.nlvr_merge_layer == 6


@pytest.mark.parametrize("name", case_of("grounding"))
def test_grounding_boxes_are_the_upstream_boxes(converted, name):
    expected, directory, record = converted(name)
    assert record.task == "grounding"
    grounder = load_role(str(directory), device="cpu", precision="fp32")
    assert (grounder.prefix_id, grounder.first_bin, grounder.first_bin + grounder.bins) == (
        expected["prefix_id"], *expected["bin_ids"])
    boxes = grounder.ground(photos(expected, grounder), expected["expressions"])
    size = expected["image_size"]
    np.testing.assert_allclose(boxes * size, expected["pred_bboxes_unit_scale"], atol=1e-4, rtol=0)
    # in the photographs' own pixels, as the toolbox maps them back with its resize's scale factor
    np.testing.assert_allclose(boxes * np.tile(expected["photo_sizes"], 2), expected["pred_bboxes"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", case_of("nlvr") + case_of("grounding"))
def test_training_losses_are_the_upstream_losses(converted, name):
    """capfilt's NLVR2 and grounding objectives (training/objectives.py) on the converted model give the toolbox's
    own loss on the same batch (both in eval mode: no dropout)."""
    from training import objectives

    expected, directory, _ = converted(name)
    role = load_role(str(directory), device="cpu", precision="fp32")
    images = photos(expected, role)
    with torch.no_grad():
        if name.endswith("nlvr"):
            pairs = torch.stack([torch.stack([role.pixel_values(images[[a]])[0], role.pixel_values(images[[b]])[0]])
                                 for a, b in expected["pairs"]])
            batch = objectives.tokenize_sentences(role.tokenizer, expected["sentences"], expected["gt_labels"])
            loss = objectives.nlvr_loss(role.model, pairs, batch)
            want = expected["loss"]
        else:
            size = expected["image_size"]
            boxes = np.array(expected["train_boxes"], dtype=np.float32) / size  # xyxy pixels of the 64 px input
            batch = objectives.tokenize_expressions(role.tokenizer, expected["expressions"], boxes)
            loss = objectives.grounding_loss(role.model, role.pixel_values(images), batch,
                                             (role.prefix_id, role.first_bin, role.bins))
            want = expected["losses"]["loss"]
    assert float(loss) == pytest.approx(want, rel=1e-4)
