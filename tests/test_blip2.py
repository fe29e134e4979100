"""BLIP-2 and CLIP roles against transformers' own classes called directly with the same protocol, on real
photographs and at two batch sizes; batching never changes an output."""
from __future__ import annotations

import time

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from models import tiny_blip2, tiny_clip
from models.blip2_captioner import CAPTION_PROMPT, VQA_PROMPT, Blip2Answerer, Blip2Captioner
from models.clip_scorer import ClipScorer
from models.inference import inference_model, load_role
from models.loading import ModelLoadError, load_checkpoint
from models.qformer_matcher import QFormerMatcher

GENERATORS = ["tiny-random-blip2_caption", "tiny-random-blip2-t5_caption"]
QUESTIONS = ["what is in the picture?", "how many", "is there a cat sitting on the table in this photo?",
             "what colour", "where"]


def fp32(name, task=None):
    return load_role(name, task, device="cpu", precision="fp32")


def reference_generate(role, pixels, texts, **kwargs):
    """Blip2ForConditionalGeneration.generate on Blip2Processor's input layout, decoded."""
    ids, mask = role.input_ids(texts)
    out = role.model.generate(pixel_values=role.pixel_values(pixels), input_ids=ids, attention_mask=mask,
                              eos_token_id=role.eos_id, pad_token_id=role.pad_id, **kwargs)
    if role.decoder_only:
        out = out[:, ids.shape[1]:]
    return [t.strip() for t in role.tokenizer.batch_decode(out, skip_special_tokens=True)]


@pytest.mark.parametrize("name", GENERATORS)
def test_beam_captions_equal_transformers_generate(name, photos):
    role = fp32(name)
    assert isinstance(role, Blip2Captioner)
    pixels = role.prepare(photos)
    protocol = dict(num_beams=5, max_new_tokens=30, min_new_tokens=1, length_penalty=1.0, repetition_penalty=1.0)
    expected = reference_generate(role, pixels, [CAPTION_PROMPT] * len(photos), do_sample=False, **protocol)
    assert role.caption(pixels) == expected
    for size in (1, 2):  # batching changes no caption
        assert [c for i in range(0, 5, size) for c in role.caption(pixels[i:i + size])] == expected
    assert len(set(expected)) > 1  # the images differ in the output


@pytest.mark.parametrize("name", ["tiny-random-blip2_vqa", "tiny-random-blip2-t5_vqa"])
def test_vqa_answers_equal_transformers_generate_and_ignore_batching(name, photos):
    role = fp32(name)
    assert isinstance(role, Blip2Answerer)
    pixels = role.prepare(photos)
    prompts = [VQA_PROMPT.format(q) for q in QUESTIONS]
    expected = reference_generate(role, pixels, prompts, do_sample=False, num_beams=5, max_new_tokens=10,
                                  min_new_tokens=1, length_penalty=-1.0)
    # Questions of different lengths are padded together (OPT on the left, T5 on the right): one at a time agrees.
    assert role.answer(pixels, QUESTIONS) == expected
    assert [role.answer(pixels[i:i + 1], QUESTIONS[i:i + 1])[0] for i in range(5)] == expected
    lavis = role.answer(pixels, QUESTIONS, prompt="Question: {} Short answer:")
    assert len(lavis) == 5


@pytest.mark.parametrize("name", GENERATORS)
def test_sampled_captions_depend_on_seed_and_key_only(name, photos):
    role = fp32(name)
    pixels = role.prepare(photos[:4])
    keys = ["s/0", "s/1", "s/2", "s/3"]
    whole = role.sample(pixels, keys, seed=3, num_captions=3)
    assert [len(c) for c in whole] == [3, 3, 3, 3]
    halves = role.sample(pixels[2:], keys[2:], seed=3, num_captions=3) + role.sample(pixels[:2], keys[:2], seed=3,
                                                                                      num_captions=3)
    assert halves[2:] + halves[:2] == whole
    assert role.sample(pixels, keys, seed=4, num_captions=3) != whole
    assert len({c for caps in whole for c in caps}) > 4  # nucleus sampling, not one caption repeated
    states = role.encode_images(pixels)
    assert role.sample(pixels, keys, seed=3, num_captions=3, image_states=states) == whole


def test_sampling_lengths_count_the_start_token_and_the_prompt(photos, monkeypatch):
    role = fp32("tiny-random-blip2_caption")
    pixels = role.prepare(photos[:2])
    start = role.start_length(CAPTION_PROMPT)
    assert start == 1 + len(role.tokenizer(CAPTION_PROMPT, add_special_tokens=False)["input_ids"])
    generate, lengths = role.model.language_model.generate, []

    def recording(**kwargs):
        out = generate(**kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(role.model.language_model, "generate", recording)
    role.sample(pixels, ["a", "b"], num_captions=4, max_length=start + 3, min_length=start + 3)
    assert lengths == [3]  # exactly 3 new tokens: neither fewer (min) nor more (max)
    with pytest.raises(ValueError, match="no new token"):
        role.sample(pixels, ["a", "b"], max_length=start)


@torch.no_grad()
def reference_matching(model, pixel_values, ids, mask):
    itm = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
    itc = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
    return torch.softmax(itm.logits_per_image, dim=1)[:, 1], itc.logits_per_image.diagonal()


@pytest.mark.parametrize("batch", [2, 5])
def test_qformer_itm_and_itc_equal_transformers(photos, batch):
    role = fp32("tiny-random-blip2_retrieval")
    assert isinstance(role, QFormerMatcher)
    pixels = role.prepare(photos[:batch])
    texts = [["an astronaut", "a red circle"], ["a cup of coffee"], ["a cat"], ["a rocket"], ["a man", "camera"]][:batch]
    scores = role.score(pixels, texts)
    flat = [t for group in texts for t in group]
    index = torch.as_tensor(scores.image_index)
    ids, mask = role.tokenize(flat, 35)
    itm, itc = reference_matching(role.model, role.pixel_values(pixels)[index], ids, mask)
    np.testing.assert_allclose(scores.itm, itm.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.itc, itc.numpy(), atol=1e-5)
    assert scores.image_embeddings.shape == (batch, role.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(scores.image_embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(scores.text_embeddings, axis=1), 1.0, atol=1e-5)
    alone = role.score(pixels[:1], texts[:1])  # batching changes no score
    np.testing.assert_allclose(alone.itm, scores.itm[:2], atol=1e-5)
    logits = role.itm(role.encode_images(pixels), flat, index, logit=True)
    assert logits.shape == (len(flat),)


def test_clip_similarity_equals_transformers(photos):
    role = fp32("tiny-random_clip")
    assert isinstance(role, ClipScorer)
    pixels = role.prepare(photos[:3])
    texts = [["an astronaut", "a red circle"], ["coffee"], ["a cat sitting"]]
    ours = role.similarity(pixels, texts)
    flat = [t for group in texts for t in group]
    ids, mask = role.tokenize(flat, 77)
    out = role.model(input_ids=ids, attention_mask=mask, pixel_values=role.pixel_values(pixels))
    cosine = (out.logits_per_image / role.model.logit_scale.exp()).T  # (texts, images)
    expected = cosine[torch.arange(len(flat)), torch.tensor([0, 0, 1, 2])]
    np.testing.assert_allclose(ours, expected.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(role.similarity(pixels[1:2], texts[1:2]), ours[2:3], atol=1e-5)


def test_tiny_blip2_models_share_the_frozen_vision_encoder():
    caption, filter_ = load_checkpoint("tiny-random-blip2_caption"), load_checkpoint("tiny-random-blip2_retrieval")
    a, b = caption.model.vision_model.state_dict(), filter_.model.vision_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = load_checkpoint("tiny-random_caption").model.vision_model.state_dict()
    assert other.keys() != a.keys() or not all(torch.equal(a[k], other[k]) for k in a)


def test_bf16_keeps_the_qformer_in_fp32():
    role = load_role("tiny-random-blip2_caption", device="cpu", precision="bf16")
    assert role.model.qformer.layernorm.weight.dtype == torch.float32
    assert role.model.query_tokens.dtype == torch.float32
    assert role.model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert role.caption(role.prepare([np.zeros((40, 40, 3), np.uint8)]))[0] is not None


def test_interpolated_image_size_runs_at_the_asked_size(photos):
    role = load_role("tiny-random-blip2_caption", device="cpu", precision="fp32", image_size=48)
    assert role.prepare(photos[:1]).shape == (1, 48, 48, 3)
    assert len(role.caption(role.prepare(photos[:2]))) == 2


def test_inference_model_with_the_seed_roles(astronaut):
    """The tiny stand-ins of the seeds' three BLIP-2 names; the real names fail at once, offline."""
    assert set(inference_model("tiny-random-blip2_caption", astronaut)) == {"pred_caption"}
    assert set(inference_model("tiny-random-blip2_vqa", astronaut, question="what is it?")) == {"pred_answer"}
    scores = inference_model("tiny-random-blip2_retrieval", astronaut, text=["a man", "a dog"])
    assert set(scores) == {"itm_score", "itc_score"} and len(scores["itm_score"]) == 2
    assert 0.0 <= scores["itm_score"][0] <= 1.0 and -1.0 <= scores["itc_score"][0] <= 1.0
    assert isinstance(inference_model("tiny-random_clip", astronaut, text="a man")["clip_score"], float)
    with pytest.raises(ValueError, match="generation"):
        fp32("tiny-random-blip2_vqa").rank(None, ["q"], ["a"])


@pytest.mark.parametrize("name", ["blip2-opt2.7b_3rdparty-zeroshot_caption", "blip2-opt2.7b_3rdparty-zeroshot_vqa",
                                  "blip2_3rdparty_retrieval", "clip-vit-large-patch14_openai"])
def test_real_names_fail_fast_offline(monkeypatch, astronaut, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_checkpoint(name)
    assert time.monotonic() - started < 5


def save(directory, task, lm="opt", clip=False):
    model, tokenizer = tiny_clip.build_tiny_clip() if clip else tiny_blip2.build_tiny_blip2(task, lm=lm)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.mark.parametrize("task,lm,zoo", [("caption", "opt", "tiny-random-blip2_caption"),
                                         ("caption", "t5", "tiny-random-blip2-t5_caption"),
                                         ("retrieval", "opt", "tiny-random-blip2_retrieval"),
                                         ("similarity", "", "tiny-random_clip")])
def test_saved_models_load_from_a_directory_with_the_same_outputs(tmp_path, photos, task, lm, zoo):
    save(tmp_path, task, lm, clip=task == "similarity")
    loaded = fp32(str(tmp_path))
    original = fp32(zoo)
    assert type(loaded) is type(original) and loaded.checkpoint.fingerprint.startswith("sha256:")
    pixels = original.prepare(photos[:2])
    if task == "caption":
        assert loaded.caption(pixels) == original.caption(pixels)
    elif task == "retrieval":
        np.testing.assert_allclose(loaded.score(pixels, [["a"], ["b c"]]).itm,
                                   original.score(pixels, [["a"], ["b c"]]).itm, atol=1e-6)
    else:
        np.testing.assert_allclose(loaded.similarity(pixels, [["a"], ["b"]]),
                                   original.similarity(pixels, [["a"], ["b"]]), atol=1e-6)


def test_a_blip2_checkpoint_serves_captioning_and_vqa(tmp_path, photos):
    save(tmp_path, "caption")
    assert isinstance(fp32(str(tmp_path)), Blip2Captioner)
    answerer = fp32(str(tmp_path), "vqa")
    assert isinstance(answerer, Blip2Answerer) and len(answerer.answer(answerer.prepare(photos[:1]), ["what"])) == 1
    with pytest.raises(ModelLoadError, match="caption / vqa model"):
        load_checkpoint(str(tmp_path), "retrieval")


def test_hub_names_load_from_the_local_cache(tmp_path, monkeypatch, photos):
    """A seed name's hub repo, found in the Hugging Face cache (as after `hf download`), loads through the zoo."""
    snapshot = tmp_path / "hub" / "models--Salesforce--blip2-itm-vit-g" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save(snapshot, "retrieval")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    role = fp32("blip2_3rdparty_retrieval")
    assert isinstance(role, QFormerMatcher) and role.checkpoint.fingerprint == f"Salesforce/blip2-itm-vit-g@{'0' * 40}"
    assert len(role.score(role.prepare(photos[:1]), [["a man"]]).itm) == 1


def test_a_blip2_config_without_image_token_index_is_refused(tmp_path):
    model, tokenizer = tiny_blip2.build_tiny_blip2("caption")
    model.config.image_token_index = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="image_token_index"):
        load_checkpoint(str(tmp_path))
