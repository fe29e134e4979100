"""The BLIP captioner: beam-search captions for evaluation, seeded nucleus samples for CapFilt."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList

from models.base import BlipRole
from models.beam import blip_beam_search
from models.patches import shared_image_rows
from models.sampling import SeededNucleus, derive_seed, row_uniforms
from models.sampling_config import DEFAULT, PROMPT

__all__ = ["PROMPT", "Captioner"]


class Captioner(BlipRole):
    task = "caption"
    default_prompt = PROMPT

    def prompt_ids(self, prompt: str, rows: int) -> torch.Tensor:
        # [DEC] + prompt tokens, without the trailing [SEP]: BLIP's decoder input (transformers' generate would
        # drop the last column itself, so a hand-built prompt goes to the text decoder directly).
        ids = self.tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"][:, :-1]
        ids[:, 0] = self.bos_id
        return ids.to(self.device).expand(rows, -1).contiguous()

    @torch.inference_mode()
    def generate(self, image_embeds: torch.Tensor, prompt: str, rows: torch.Tensor | None = None, **kwargs) -> list[str]:
        """Decode one caption per row; row r reads image_embeds[rows[r]] (default: one row per image).

        No encoder mask is passed: every image token is valid, and an all-ones mask changes nothing.
        """
        input_ids = self.prompt_ids(prompt, image_embeds.shape[0] if rows is None else rows.shape[0])
        # Without rows (beam search) transformers expands the states per beam itself.
        sharing = (contextlib.nullcontext(image_embeds) if rows is None
                   else shared_image_rows(self.model, image_embeds, rows))
        with self.autocast(), sharing as states:
            out = self.model.text_decoder.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                encoder_hidden_states=states,
                eos_token_id=self.sep_id,
                pad_token_id=self.pad_id,
                **kwargs,
            )
        return self.strip_prompt(out[:, 1:], prompt)

    def strip_prompt(self, ids, prompt: str) -> list[str]:
        """BLIP's captions: the sequence after [DEC] decoded, then as many characters cut as the prompt has
        (`caption[len(prompt):]` in the original, LAVIS and the toolbox alike; a caption whose first token is a
        word piece joins the prompt's last word, and loses it with the cut)."""
        return [text[len(prompt):].strip() for text in self.decode(ids)]

    def caption(self, images, prompt: str = PROMPT, num_beams: int = 3, max_length: int = 20,
                min_length: int = 5, repetition_penalty: float = 1.0, beam_rule: str = "blip") -> list[str]:
        """BLIP's evaluation protocol: beam search scored as BLIP's (models.beam; `beam_rule="toolbox"` stops as
        the toolbox's transformers does); lengths count [DEC] and the prompt, as in BLIP. One beam is greedy."""
        image_embeds = self.encode_images(images)
        if num_beams == 1:
            return self.generate(image_embeds, prompt, num_beams=1, max_length=max_length, min_length=min_length,
                                 repetition_penalty=repetition_penalty, do_sample=False)
        input_ids = self.prompt_ids(prompt, image_embeds.shape[0])
        with torch.inference_mode(), self.autocast():
            best = blip_beam_search(self.model.text_decoder, input_ids, image_embeds, num_beams=num_beams,
                                    max_length=max_length, min_length=min_length, eos_token_id=self.sep_id,
                                    pad_token_id=self.pad_id, repetition_penalty=repetition_penalty,
                                    rule=beam_rule)
        return self.strip_prompt([tokens[1:] for tokens in best], prompt)

    def sample(self, images, sample_ids: Sequence[str], seed: int = DEFAULT.seed,
               num_captions: int = DEFAULT.num_captions, prompt: str | None = None, top_p: float = DEFAULT.top_p,
               top_k: int = DEFAULT.top_k, repetition_penalty: float = DEFAULT.repetition_penalty,
               max_length: int = DEFAULT.max_length, min_length: int = DEFAULT.min_length,
               image_states: torch.Tensor | None = None) -> list[list[str]]:
        """CapFilt's synthetic captions: `num_captions` nucleus samples per image (defaults: models.sampling_config).

        Caption j of a sample depends only on (seed, sample id, j) and the model: not on the batch, its size or order.
        top_k=50 is transformers' sampling default, which BLIP's original sampling ran with.
        """
        if len(sample_ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(sample_ids)} sample ids")
        if num_captions < 1:
            raise ValueError("num_captions must be at least 1")
        prompt = PROMPT if prompt is None else prompt
        # once per image (or given): the N rows share its states and keys/values
        image_embeds = self.encode_images(images) if image_states is None else image_states
        rows = torch.arange(len(sample_ids), device=self.device).repeat_interleave(num_captions)
        prompt_length = self.prompt_ids(prompt, 1).shape[1]
        seeds = [derive_seed(seed, sid, j) for sid in sample_ids for j in range(num_captions)]
        nucleus = SeededNucleus(row_uniforms(seeds, max_length), prompt_length, top_p=top_p, top_k=top_k)
        texts = self.generate(image_embeds, prompt, rows=rows, do_sample=False, num_beams=1, max_length=max_length,
                               min_length=min_length, repetition_penalty=repetition_penalty,
                               logits_processor=LogitsProcessorList([nucleus]))
        return [texts[i * num_captions:(i + 1) * num_captions] for i in range(len(sample_ids))]
