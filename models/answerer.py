"""The BLIP VQA answerer: free answers by beam search, or BLIP's ranking over a candidate answer list."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from models.base import BlipRole
from models.beam import blip_beam_search

QUESTION_MAX_LENGTH = 35
# BLIP scores a candidate answer by minus its decoder loss, and that loss is label-smoothed (0.1 in BLIP's med.py);
# ranking by the same quantity keeps the chosen answers those of the original code.
RANK_LABEL_SMOOTHING = 0.1


class Answerer(BlipRole):
    task = "vqa"

    @torch.inference_mode()
    def encode_questions(self, images, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Question states from the image-grounded text encoder ([ENC] first, as BLIP encodes questions)."""
        if len(questions) != len(images):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        image_states = self.encode_images(images)
        ids, mask = self.tokenize(questions, QUESTION_MAX_LENGTH, first_token=self.enc_id)
        with self.autocast():
            states = self.model.text_encoder(
                input_ids=ids,
                attention_mask=mask,
                encoder_hidden_states=image_states,
                encoder_attention_mask=torch.ones(image_states.shape[:-1], dtype=torch.long, device=self.device),
                return_dict=True,
            ).last_hidden_state
        return states, mask

    @torch.inference_mode()
    def answer(self, images, questions: Sequence[str], num_beams: int = 3, max_length: int = 10,
               min_length: int = 1, attend_padding: bool = False, beam_rule: str = "blip") -> list[str]:
        """Generated answers (BLIP's OK-VQA / OCR-VQA protocol: beam 3, max 10, min 1), scored as BLIP's beam search
        (models.beam; `beam_rule="toolbox"` stops as the toolbox's transformers does); one beam is greedy decoding.

        The decoder reads the question's states through the question's own mask, so an answer does not depend on the
        other questions of its batch. The original BLIP, LAVIS and the toolbox pass an all-ones mask here, so the
        padding of shorter questions is read too and their answers depend on the batch's longest question:
        `attend_padding=True` does the same (it reproduces their outputs batch for batch)."""
        states, mask = self.encode_questions(images, questions)
        if attend_padding:
            mask = torch.ones_like(mask)
        start = torch.full((states.shape[0], 1), self.bos_id, dtype=torch.long, device=self.device)
        with self.autocast():
            if num_beams == 1:
                out = self.model.text_decoder.generate(
                    input_ids=start, encoder_hidden_states=states,
                    encoder_attention_mask=mask,  # the question's own mask: padding is not attended
                    eos_token_id=self.sep_id, pad_token_id=self.pad_id, num_beams=1, max_length=max_length,
                    min_length=min_length, do_sample=False)
                return self.decode(out[:, 1:])
            best = blip_beam_search(self.model.text_decoder, start, states, mask, num_beams=num_beams,
                                    max_length=max_length, min_length=min_length, eos_token_id=self.sep_id,
                                    pad_token_id=self.pad_id, rule=beam_rule)
        return self.decode([tokens[1:] for tokens in best])

    @torch.inference_mode()
    def rank(self, images, questions: Sequence[str], candidates: Sequence[str], k: int = 128,
             label_smoothing: float = RANK_LABEL_SMOOTHING) -> list[str]:
        """BLIP's VQAv2 protocol: shortlist the k candidates whose first token is most probable, then pick the
        candidate with the lowest full-answer decoder loss (label-smoothed as BLIP's; 0 gives plain likelihood)."""
        if not candidates:
            raise ValueError("rank needs a non-empty candidate answer list")
        states, mask = self.encode_questions(images, questions)
        n_questions = states.shape[0]
        answer_ids, answer_mask = self.tokenize(candidates, max_length=QUESTION_MAX_LENGTH, first_token=self.bos_id)
        k = min(k, len(candidates))
        with self.autocast():
            start = torch.full((n_questions, 1), self.bos_id, dtype=torch.long, device=self.device)
            first = self.model.text_decoder(
                input_ids=start, encoder_hidden_states=states, encoder_attention_mask=mask, return_dict=True
            ).logits[:, 0, :]
        first_prob = torch.softmax(first.float(), dim=-1).index_select(1, answer_ids[:, 1])
        _, top = first_prob.topk(k, dim=1)  # (Q, k) candidate indices
        flat = top.reshape(-1)
        ids, amask = answer_ids[flat], answer_mask[flat]
        with self.autocast():
            logits = self.model.text_decoder(
                input_ids=ids,
                attention_mask=amask,
                encoder_hidden_states=states.repeat_interleave(k, dim=0),
                encoder_attention_mask=mask.repeat_interleave(k, dim=0),
                return_dict=True,
            ).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        token_loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
        loss = (token_loss * amask[:, 1:]).sum(-1)
        best = loss.view(n_questions, k).argmin(dim=1)
        chosen = top.gather(1, best.unsqueeze(1)).squeeze(1)
        return [candidates[i] for i in chosen.tolist()]
