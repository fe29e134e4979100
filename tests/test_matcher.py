"""Matcher (the CapFilt filter): ITM with [ENC], ITC with [CLS], one vision pass per image, exact scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

TEXTS = ["a man in a white space suit", "a cup of coffee on a table", "a cat", "two red circles", "the sky",
         "a rocket standing at the launch pad next to a tower", "x"]


@pytest.fixture(scope="module")
def pixels(matcher, photos):
    """Two photographs (astronaut, coffee) as a prepared batch."""
    return matcher.prepare(photos[:2])


def reference_scores(matcher, pixels, image: int, text: str) -> tuple[float, float]:
    """(p(match), cosine) for one pair straight from transformers' BlipForImageTextRetrieval.forward."""
    tok, model = matcher.tokenizer, matcher.model
    ids = tok([text], return_tensors="pt")["input_ids"]
    itm_ids = ids.clone()
    itm_ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
    pixel_values = matcher.pixel_values(pixels[image : image + 1])
    with torch.no_grad():
        itm_logits = model(input_ids=itm_ids, pixel_values=pixel_values, use_itm_head=True).itm_score
        cosine = model(input_ids=ids, pixel_values=pixel_values, use_itm_head=False).itm_score
    return torch.softmax(itm_logits, -1)[0, 1].item(), cosine[0, 0].item()


# ---------------------------------------------------------------- which first token each encoder call gets


def test_itm_uses_enc_and_itc_uses_cls(matcher, pixels, record_forward):
    """Text-encoder calls with image states (ITM) start with [ENC]; calls without (ITC) start with [CLS]."""
    calls = record_forward(matcher.model.text_encoder)
    matcher.score(pixels, [TEXTS[:4], TEXTS[4:]])
    enc_id = matcher.tokenizer.convert_tokens_to_ids("[ENC]")
    itm = [c for c in calls if c.get("encoder_hidden_states") is not None]
    itc = [c for c in calls if c.get("encoder_hidden_states") is None]
    assert len(itm) == 1 and len(itc) == 1
    assert itm[0]["input_ids"].shape[0] == itc[0]["input_ids"].shape[0] == len(TEXTS)
    assert enc_id != matcher.tokenizer.cls_token_id
    assert itm[0]["input_ids"][:, 0].eq(enc_id).all()
    assert itc[0]["input_ids"][:, 0].eq(matcher.tokenizer.cls_token_id).all()
    # apart from the first token both calls see the same tokens
    assert torch.equal(itm[0]["input_ids"][:, 1:], itc[0]["input_ids"][:, 1:])


# ---------------------------------------------------------------- one vision pass per image


@pytest.mark.parametrize("groups", [(5, 2), (7, 0), (0, 7)])
def test_score_runs_the_vision_encoder_once_per_image(matcher, pixels, record_forward, groups):
    """2 images with 7 texts (split 5/2, 7/0 or 0/7) cost one vision call of 2 rows, whatever the split."""
    calls = record_forward(matcher.model.vision_model)
    texts = [TEXTS[: groups[0]], TEXTS[groups[0] :]]
    scores = matcher.score(pixels, texts)
    assert len(calls) == 1
    assert calls[0]["pixel_values"].shape[0] == 2
    assert scores.itm.shape == scores.itc.shape == (7,)
    assert scores.image_index.tolist() == [0] * groups[0] + [1] * groups[1]
    assert scores.image_embeddings.shape[0] == 2


def test_score_with_no_texts_returns_empty_scores(matcher, pixels):
    """Images with no texts at all give empty score arrays but still their image embeddings."""
    scores = matcher.score(pixels, [[], []])
    assert scores.itm.shape == scores.itc.shape == scores.image_index.shape == (0,)
    assert scores.text_embeddings.shape == (0, scores.image_embeddings.shape[1])
    assert scores.image_embeddings.shape[0] == 2


def test_score_checks_one_text_list_per_image(matcher, pixels):
    """A list of text lists of the wrong length is a ValueError."""
    with pytest.raises(ValueError, match="lists of texts"):
        matcher.score(pixels, [TEXTS])


# ---------------------------------------------------------------- numbers


def test_scores_equal_transformers_forward_pair_by_pair(matcher, pixels):
    """Every itm / itc of a batched score equals transformers' own ITM softmax and ITC cosine for that pair."""
    scores = matcher.score(pixels, [TEXTS[:4], TEXTS[4:]])
    for t, text in enumerate(TEXTS):
        itm, itc = reference_scores(matcher, pixels, int(scores.image_index[t]), text)
        assert scores.itm[t] == pytest.approx(itm, abs=1e-5)
        assert scores.itc[t] == pytest.approx(itc, abs=1e-5)


def test_itm_is_softmax_of_itm_head_by_hand(matcher, pixels):
    """itm equals softmax(itm_head(text_encoder([ENC] text | vision states)[:, 0]))[1] computed step by step."""
    model, tok = matcher.model, matcher.tokenizer
    text = TEXTS[1]
    ids = tok([text], return_tensors="pt")["input_ids"]
    ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
    with torch.no_grad():
        states = model.vision_model(pixel_values=matcher.pixel_values(pixels[1:2])).last_hidden_state
        hidden = model.text_encoder(input_ids=ids, encoder_hidden_states=states).last_hidden_state
        expected = torch.softmax(model.itm_head(hidden[:, 0]), -1)[0, 1].item()
    assert matcher.score(pixels, [[], [text]]).itm[0] == pytest.approx(expected, abs=1e-6)


def test_itc_is_cosine_of_normalised_projections(matcher, pixels):
    """Embeddings are unit vectors and itc is the dot product of a text's and its image's embedding."""
    scores = matcher.score(pixels, [TEXTS[:3], TEXTS[3:]])
    np.testing.assert_allclose(np.linalg.norm(scores.text_embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(scores.image_embeddings, axis=1), 1.0, atol=1e-5)
    dots = (scores.text_embeddings * scores.image_embeddings[scores.image_index]).sum(1)
    np.testing.assert_allclose(scores.itc, dots, atol=1e-6)
    model = matcher.model
    with torch.no_grad():
        states = model.vision_model(pixel_values=matcher.pixel_values(pixels)).last_hidden_state
        image = F.normalize(model.vision_proj(states[:, 0]), dim=-1)
        ids = matcher.tokenizer(TEXTS, padding=True, return_tensors="pt")
        text = model.text_encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
        text = F.normalize(model.text_proj(text[:, 0]), dim=-1)
    np.testing.assert_allclose(scores.image_embeddings, image.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.text_embeddings, text.numpy(), atol=1e-5)


def test_scores_do_not_depend_on_batch_companions(matcher, pixels):
    """A text scores the same alone, among other (longer, padded) texts, and with another image in the batch."""
    alone = matcher.score(pixels[:1], [[TEXTS[2]]])
    crowded = matcher.score(pixels, [[TEXTS[5], TEXTS[2], TEXTS[0]], TEXTS[3:5]])
    np.testing.assert_allclose(crowded.itm[1], alone.itm[0], atol=1e-6)
    np.testing.assert_allclose(crowded.itc[1], alone.itc[0], atol=1e-6)
    np.testing.assert_allclose(crowded.text_embeddings[1], alone.text_embeddings[0], atol=1e-6)
    np.testing.assert_allclose(crowded.image_embeddings[0], alone.image_embeddings[0], atol=1e-6)


def test_scores_depend_on_the_image(matcher, pixels):
    """The same text gets different ITC and ITM scores against two different photographs."""
    scores = matcher.score(pixels, [[TEXTS[0]], [TEXTS[0]]])
    assert scores.itc[0] != pytest.approx(scores.itc[1], abs=1e-3)
    assert scores.itm[0] != scores.itm[1]


def test_default_precision_scores_are_close_to_fp32(matcher, matcher_default, pixels):
    """At the default precision (bf16 autocast here) scores stay within bf16 rounding of fp32 and are probabilities."""
    texts = [TEXTS[:4], TEXTS[4:]]
    exact, default = matcher.score(pixels, texts), matcher_default.score(pixels, texts)
    assert default.itm.dtype == default.itc.dtype == np.float32
    assert ((default.itm >= 0) & (default.itm <= 1)).all()
    np.testing.assert_allclose(default.itm, exact.itm, atol=0.01)
    np.testing.assert_allclose(default.itc, exact.itc, atol=0.01)
