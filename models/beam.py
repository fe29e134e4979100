"""BLIP's beam search, as the transformers BLIP ran (4.15) did it: on transformers' BLIP text decoder
(`blip_beam_search`), and on any model through a step function (`beam_search`; BLIP-2's OPT captioner).

transformers 5's `generate(num_beams=...)` divides a finished hypothesis' log-probability by the number of new
tokens, the end token included. BLIP's transformers divided it by the length of the whole sequence ([DEC] and the
prompt included, the end token not), and its early-stopping bound by the same length. No `length_penalty` maps one
rule onto the other, and on the same weights they choose different captions and answers (issue 26). The evaluation
protocols follow BLIP, so its captioner and answerer decode with this.

The early-stopping bound has two forms, `rule`: "blip", BLIP's transformers 4.15 (and LAVIS's 4.26), divides the
best running score by the current length; "toolbox", transformers 4.33 (which the toolbox runs; the change came
after 4.26), by the length after the next token, so it stops later. Finished hypotheses are scored alike in both.

BLIP-2's upstreams count other prefixes: LAVIS (4.26) the prompt's tokens, not the 32 query embeddings before them;
the toolbox (4.33, generating from embeddings alone) one start placeholder. The caller passes the prefix its rule
counts.

The steps are 4.15's: log-softmax, then the repetition penalty and the minimum length on the log-probabilities,
2 * beams candidates per input, an end token among the top `beams` candidates finishes a hypothesis, an input is
done when it holds `beams` hypotheses none of which the best running beam can still beat, and at `max_length`
(counted over the whole sequence) the running beams join the finished ones.
"""
from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


RULES = {"blip": 0, "lavis": 0, "toolbox": 1}  # what the early-stopping bound adds to the current length


class _Hypotheses:
    """One input's finished hypotheses, at most `size` of them, scored by BLIP's rule."""

    def __init__(self, size: int, length_penalty: float):
        self.size, self.length_penalty = size, length_penalty
        self.items: list[tuple[float, torch.Tensor]] = []
        self.worst = 1e9

    def add(self, tokens: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / (tokens.shape[-1] ** self.length_penalty)
        if len(self.items) < self.size or score > self.worst:
            self.items.append((score, tokens))
            if len(self.items) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.items))
                del self.items[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def done(self, best_sum_logprobs: float, length: int) -> bool:
        if len(self.items) < self.size:
            return False
        return self.worst >= best_sum_logprobs / length ** self.length_penalty

    def best(self) -> torch.Tensor:
        # 4.15 sorts by score and takes the last: among equal scores, the one added last.
        return sorted(self.items, key=lambda item: item[0])[-1][1]


def cache_argument(decoder) -> str:
    """transformers renames `past_key_values` to `cache` during 5.x; pass the one this release takes."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _new_cache(config) -> EncoderDecoderCache:
    try:
        return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    except TypeError:  # releases whose DynamicCache takes no config
        return EncoderDecoderCache(DynamicCache(), DynamicCache())


@torch.inference_mode()
def beam_search(step, input_ids: torch.Tensor, *, num_beams: int, max_length: int, min_length: int,
                eos_token_id: int, pad_token_id: int, repetition_penalty: float = 1.0, length_penalty: float = 1.0,
                rule: str = "blip") -> list[torch.Tensor]:
    """The best sequence per input row (its counted prefix included, the end token not). `input_ids` (B, L) is the
    prefix the rule counts (BLIP: [DEC] and the prompt); `step(tokens, rows)` returns the next-token logits of every
    beam row: first with the whole prefix repeated per beam (rows None), then with the last chosen token of each row,
    its model state reordered by `rows` first. Lengths count the prefix and the new tokens; `rule`: RULES."""
    if rule not in RULES:
        raise ValueError(f"unknown beam rule {rule!r}: use one of {', '.join(RULES)}")
    lookahead = RULES[rule]
    batch, device = input_ids.shape[0], input_ids.device
    beams = num_beams
    ids = input_ids.repeat_interleave(beams, dim=0)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = -1e9
    scores = scores.view(-1)
    finished = [_Hypotheses(beams, length_penalty) for _ in range(batch)]
    done = [False] * batch
    logits = step(ids, None)
    while True:
        length = ids.shape[1]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if repetition_penalty != 1.0:
            seen = log_probs.gather(1, ids)
            log_probs = log_probs.scatter(1, ids, torch.where(seen < 0, seen * repetition_penalty,
                                                              seen / repetition_penalty))
        if length < min_length:
            log_probs[:, eos_token_id] = -float("inf")
        vocab = log_probs.shape[-1]
        candidates = (log_probs + scores[:, None]).view(batch, beams * vocab)
        top_scores, top = candidates.topk(2 * beams, dim=1, largest=True, sorted=True)
        top_beams, top_tokens = top // vocab, top % vocab
        next_scores, next_tokens, next_rows = [], [], []
        for b in range(batch):
            if done[b]:
                next_scores += [0.0] * beams
                next_tokens += [pad_token_id] * beams
                next_rows += [b * beams] * beams
                continue
            kept = 0
            for rank, (token, score, beam) in enumerate(zip(top_tokens[b].tolist(), top_scores[b].tolist(),
                                                            top_beams[b].tolist())):
                row = b * beams + beam
                if token == eos_token_id:
                    if rank < beams:
                        finished[b].add(ids[row].clone(), score)
                else:
                    next_scores.append(score)
                    next_tokens.append(token)
                    next_rows.append(row)
                    kept += 1
                if kept == beams:
                    break
            done[b] = done[b] or finished[b].done(top_scores[b].max().item(), length + lookahead)
        rows = torch.tensor(next_rows, device=device)
        tokens = torch.tensor(next_tokens, device=device).unsqueeze(1)
        ids = torch.cat([ids[rows], tokens], dim=1)
        scores = torch.tensor(next_scores, device=device)
        if all(done) or ids.shape[1] >= max_length:
            break
        logits = step(tokens, rows)
    for b in range(batch):
        if not done[b]:
            for k in range(beams):
                finished[b].add(ids[b * beams + k], scores[b * beams + k].item())
    return [hypotheses.best() for hypotheses in finished]


@torch.inference_mode()
def blip_beam_search(decoder, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
                     encoder_attention_mask: torch.Tensor | None = None, **search) -> list[torch.Tensor]:
    """`beam_search` on transformers' BlipTextLMHeadModel `decoder`: `input_ids` (B, L) the start token and prompt,
    `encoder_hidden_states` (B, N, D) what it cross-attends to."""
    beams = search["num_beams"]
    states = encoder_hidden_states.repeat_interleave(beams, dim=0)
    mask = (torch.ones(states.shape[:-1], dtype=torch.long, device=states.device) if encoder_attention_mask is None
            else encoder_attention_mask.repeat_interleave(beams, dim=0))
    cache, cache_name = _new_cache(decoder.config), cache_argument(decoder)
    seen = [input_ids.shape[1]]

    def step(tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is not None:
            cache.reorder_cache(rows)
            seen[0] += 1
        attention = torch.ones(tokens.shape[0], seen[0], dtype=torch.long, device=tokens.device)
        return decoder(input_ids=tokens, attention_mask=attention, encoder_hidden_states=states,
                       encoder_attention_mask=mask, use_cache=True, return_dict=True,
                       **{cache_name: cache}).logits[:, -1, :]

    return beam_search(step, input_ids, **search)
