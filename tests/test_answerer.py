"""Answerer: BLIP VQA with [ENC] question encoding, [DEC]-started answers, generation and candidate ranking."""
from __future__ import annotations

import pytest
import torch

QUESTIONS = ["what is the man wearing in this picture", "how many cups"]  # different lengths: padded together
CANDIDATES = ["red", "a white space suit", "two", "yes", "no", "the blue sky above", "seven", "a dog"]


@pytest.fixture(scope="module")
def pixels(answerer, photos):
    """Two photographs (astronaut, coffee) as a prepared batch."""
    return answerer.prepare(photos[:2])


def token_ids(answerer, text: str, first: str) -> torch.Tensor:
    """(1, L) ids of `text` with the tokenizer's [CLS] replaced by the special token `first`."""
    ids = answerer.tokenizer([text], return_tensors="pt")["input_ids"]
    ids[:, 0] = answerer.tokenizer.convert_tokens_to_ids(first)
    return ids


def question_states(answerer, pixels, index: int) -> torch.Tensor:
    """BLIP's question encoding for one image and question, unbatched: vision pass, then [ENC] question + image."""
    model = answerer.model
    with torch.no_grad():
        image = model.vision_model(pixel_values=answerer.pixel_values(pixels[index : index + 1])).last_hidden_state
        ids = token_ids(answerer, QUESTIONS[index], "[ENC]")
        return model.text_encoder(input_ids=ids, encoder_hidden_states=image).last_hidden_state


def first_token_probs(answerer, states: torch.Tensor) -> torch.Tensor:
    """p(first answer token) after [DEC], for every candidate."""
    start = torch.tensor([[answerer.tokenizer.convert_tokens_to_ids("[DEC]")]])
    with torch.no_grad():
        logits = answerer.model.text_decoder(input_ids=start, encoder_hidden_states=states).logits[0, 0]
    firsts = [token_ids(answerer, c, "[DEC]")[0, 1].item() for c in CANDIDATES]
    return torch.softmax(logits, -1)[firsts]


def answer_log_likelihood(answerer, states: torch.Tensor, answer: str, smoothing: float = 0.1) -> float:
    """Minus BLIP's decoder loss of (answer tokens + [SEP]) by teacher forcing, one unpadded answer: torch's
    label-smoothed cross entropy summed over tokens (smoothing 0: the plain log-likelihood)."""
    ids = token_ids(answerer, answer, "[DEC]")
    with torch.no_grad():
        logits = answerer.model.text_decoder(input_ids=ids, encoder_hidden_states=states).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], label_smoothing=smoothing, reduction="sum")
    return -loss.item()


# ---------------------------------------------------------------- special tokens


def test_questions_are_encoded_with_enc_first(answerer, pixels, record_forward):
    """Question encoding calls the image-grounded text encoder with [ENC] first, for answer() and rank()."""
    calls = record_forward(answerer.model.text_encoder)
    answerer.answer(pixels, QUESTIONS)
    answerer.rank(pixels, QUESTIONS, CANDIDATES)
    enc_id = answerer.tokenizer.convert_tokens_to_ids("[ENC]")
    assert len(calls) == 2
    for call in calls:
        assert call["encoder_hidden_states"] is not None
        assert call["input_ids"][:, 0].eq(enc_id).all()


def test_answers_start_with_dec(answerer, pixels, record_forward):
    """Every decoder call of rank() starts answers with [DEC]; generation in answer() starts from [DEC] too."""
    dec_id = answerer.tokenizer.convert_tokens_to_ids("[DEC]")
    calls = record_forward(answerer.model.text_decoder)
    answerer.rank(pixels, QUESTIONS, CANDIDATES)
    assert len(calls) == 2
    assert all(call["input_ids"][:, 0].eq(dec_id).all() for call in calls)
    calls.clear()
    answerer.answer(pixels, QUESTIONS)
    assert calls[0]["input_ids"].shape[1] == 1 and calls[0]["input_ids"].eq(dec_id).all()


# ---------------------------------------------------------------- ranking


@pytest.mark.parametrize("smoothing", [0.1, 0.0])
def test_rank_with_full_k_is_the_brute_force_argmax(answerer, pixels, smoothing):
    """With k = len(candidates), rank returns the candidate of lowest BLIP decoder loss (label smoothing 0.1 by
    default, as BLIP; 0 is the plain log-likelihood), per question."""
    ranked = answerer.rank(pixels, QUESTIONS, CANDIDATES, k=len(CANDIDATES), label_smoothing=smoothing)
    for q in range(len(QUESTIONS)):
        states = question_states(answerer, pixels, q)
        scores = [answer_log_likelihood(answerer, states, c, smoothing) for c in CANDIDATES]
        assert ranked[q] == CANDIDATES[max(range(len(CANDIDATES)), key=scores.__getitem__)]


@pytest.mark.parametrize("k", [1, 3])
def test_rank_with_small_k_picks_from_the_first_token_shortlist(answerer, pixels, k):
    """With small k the answer is among the k candidates of most probable first token, and the best of those."""
    ranked = answerer.rank(pixels, QUESTIONS, CANDIDATES, k=k)
    for q in range(len(QUESTIONS)):
        states = question_states(answerer, pixels, q)
        shortlist = [CANDIDATES[i] for i in first_token_probs(answerer, states).topk(k).indices.tolist()]
        assert ranked[q] in shortlist
        assert ranked[q] == max(shortlist, key=lambda c: answer_log_likelihood(answerer, states, c))


def test_rank_does_not_depend_on_candidate_order(answerer, pixels):
    """Reversing the candidate list does not change the ranked answers (k = all)."""
    forward = answerer.rank(pixels, QUESTIONS, CANDIDATES, k=len(CANDIDATES))
    assert answerer.rank(pixels, QUESTIONS, CANDIDATES[::-1], k=len(CANDIDATES)) == forward


def test_rank_refuses_an_empty_candidate_list(answerer, pixels):
    """rank without candidates is a ValueError."""
    with pytest.raises(ValueError, match="candidate"):
        answerer.rank(pixels, QUESTIONS, [])


# ---------------------------------------------------------------- generation


def test_answer_generates_one_string_per_question_within_max_length(answerer, pixels, spy):
    """answer() gives one string per question; the decoder output is at most max_length tokens with [DEC]."""
    import models.answerer as module

    calls = spy(module, "blip_beam_search")
    answers = answerer.answer(pixels, QUESTIONS, max_length=6)
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    out = calls[0][2]
    assert all(len(row) <= 6 and row[0] == answerer.bos_id for row in out)
    assert answers == [answerer.tokenizer.decode(row[1:], skip_special_tokens=True,
                                                 clean_up_tokenization_spaces=True).strip() for row in out]


LONG_QUESTION = "what is the man wearing in this picture of the sky above the street next to the tree and the house"


def test_answer_is_batch_independent(answerer, pixels):
    """A question's generated answer is the same alone and batched with a longer (padded-against) question (fp32)."""
    together = answerer.answer(pixels, QUESTIONS)
    assert together == [answerer.answer(pixels[i : i + 1], QUESTIONS[i : i + 1])[0] for i in range(2)]


def test_rank_is_batch_independent(answerer, pixels):
    """A short question ranks two near-tied candidates the same alone and batched with a long question (fp32)."""
    candidates = ["dot", "which"]  # full-answer log-likelihoods 6e-4 apart for this image and question
    alone = answerer.rank(pixels[1:2], ["how many"], candidates)[0]
    assert answerer.rank(pixels, [LONG_QUESTION, "how many"], candidates)[1] == alone


def test_answer_of_equal_length_questions_is_batch_independent(answerer, pixels):
    """Without padding (questions of equal token length) batched and single answers agree (fp32)."""
    questions = ["how many people", "what is shown"]
    assert len(set(answerer.tokenize(questions, 35)[1].sum(1).tolist())) == 1  # no padding
    together = answerer.answer(pixels, questions)
    assert together == [answerer.answer(pixels[i : i + 1], questions[i : i + 1])[0] for i in range(2)]


def test_questions_must_match_images(answerer, pixels):
    """One question per image, else ValueError."""
    with pytest.raises(ValueError, match="questions"):
        answerer.answer(pixels, QUESTIONS[:1])
