"""BLIP-2's generating roles, on OPT or Flan-T5 (transformers' `Blip2ForConditionalGeneration`): beam captions and
seeded nucleus samples (`Blip2Captioner`), zero-shot VQA (`Blip2Answerer`).

The language model's input is laid out as transformers' Blip2Processor lays it out: the checkpoint's <image> token
once per query (32), then the tokenized text (OPT: </s> first, padded on the left; T5: </s> last, padded on the
right); the Q-Former's projected query outputs replace the <image> embeddings. Generation then runs on the language
model itself, so a caller can start from vision states computed once (`image_states=`) and share them with a filter.
Lengths of the beam protocols count new tokens (`max_new_tokens`, `min_new_tokens`); CapFilt's sampling lengths
count the start token and the prompt, as BLIP's do (models.sampling_config).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, LogitsProcessorList

from models.base import Role
from models.beam import beam_search, cache_argument
from models.sampling import SeededNucleus, derive_seed, row_uniforms
from models.sampling_config import DEFAULT

CAPTION_PROMPT = "a photo of"  # BLIP-2's captioning prompt (the toolbox's and LAVIS's)
VQA_PROMPT = "Question: {} Answer:"  # the toolbox's; LAVIS evaluates with "Question: {} Short answer:"


class Blip2Generator(Role):
    """What captioning and answering share: query embeddings from vision states, the language model's input, and
    generation on the language model."""

    family = "blip2"

    def __init__(self, checkpoint, **kwargs):
        super().__init__(checkpoint, **kwargs)
        config = self.model.config
        self.decoder_only = bool(config.use_decoder_only_language_model)
        self.queries = int(config.num_query_tokens)
        self.image_token = int(config.image_token_index)
        self.tokenizer.padding_side = "left" if self.decoder_only else "right"
        text = config.text_config
        self.pad_id = text.pad_token_id
        self.bos_id = getattr(text, "bos_token_id", None)  # the toolbox's transformers starts its output with it (a placeholder)
        if self.decoder_only:  # OPT ends a caption at its newline token (50118 in OPT's vocabulary), as LAVIS does
            self.eos_id = self.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
        else:
            self.eos_id = text.eos_token_id

    def decode(self, ids) -> list[str]:
        """Token ids -> texts as the upstreams' transformers (4.26, 4.33) decoded them: spaces before punctuation
        and contractions cleaned up ("a cat." for "a cat ."), which transformers 5 no longer does for BPE."""
        rows = [row.tolist() if hasattr(row, "tolist") else list(row) for row in ids]
        return [self.tokenizer.clean_up_tokenization(text).strip()
                for text in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    @torch.inference_mode()
    def query_embeds(self, image_states: torch.Tensor) -> torch.Tensor:
        """(B, queries, language model width): the Q-Former's query outputs over the images, projected."""
        mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=self.device)
        with self.autocast():
            queries = self.model.query_tokens.expand(image_states.shape[0], -1, -1)
            out = self.model.qformer(query_embeds=queries, encoder_hidden_states=image_states,
                                     encoder_attention_mask=mask, return_dict=True).last_hidden_state
            return self.model.language_projection(out.to(image_states.dtype))

    def input_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Blip2Processor's layout: <image> x queries, then the tokenized texts (padded as the model family wants)."""
        encoded = self.tokenizer(list(texts), padding="longest", return_tensors="pt")
        images = torch.full((len(texts), self.queries), self.image_token, dtype=torch.long)
        ids = torch.cat([images, encoded["input_ids"]], dim=1).to(self.device)
        mask = torch.cat([torch.ones_like(images), encoded["attention_mask"]], dim=1).to(self.device)
        return ids, mask

    def input_embeds(self, ids: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """The language model's input embeddings of `ids`, the query embeddings (one row per text) at <image>."""
        embeds = self.model.language_model.get_input_embeddings()(ids)
        return embeds.masked_scatter((ids == self.image_token).unsqueeze(-1), query.to(embeds.dtype))

    @torch.inference_mode()
    def generate(self, query: torch.Tensor, texts: Sequence[str], rows: torch.Tensor | None = None,
                 **kwargs) -> list[str]:
        """One output per text; text r reads query[rows[r]] (default: query[r])."""
        ids, mask = self.input_ids(texts)
        rows = torch.arange(len(texts), device=self.device) if rows is None else rows
        language_model = self.model.language_model
        with self.autocast():
            embeds = self.input_embeds(ids, query[rows])
            inputs = {"inputs_embeds": embeds, "attention_mask": mask}
            if self.decoder_only:  # the output then starts with the input, as in Blip2ForConditionalGeneration
                inputs["input_ids"] = ids
            out = language_model.generate(**inputs, eos_token_id=self.eos_id, pad_token_id=self.pad_id, **kwargs)
        return self.decode(out[:, ids.shape[1]:] if self.decoder_only else out)

    @torch.inference_mode()
    def beam_generate(self, query: torch.Tensor, texts: Sequence[str], rule: str, *, num_beams: int,
                      max_new_tokens: int, min_new_tokens: int, length_penalty: float,
                      repetition_penalty: float = 1.0) -> list[str]:
        """Beam search on OPT over the queries and each text (text r reads query[r]), lengths counted as `rule`'s
        transformers counted them (models.beam): LAVIS's the prompt's tokens and the new ones, the toolbox's
        (generating from embeddings alone) one start placeholder and the new ones."""
        ids, mask = self.input_ids(texts)
        if rule == "lavis" and not bool(mask.all()):
            raise ValueError("LAVIS's beam rule counts the prompt's tokens, which padded prompts of different "
                             "lengths do not share; use it with one prompt")
        language_model = self.model.language_model
        counted = ids[:, self.queries:] if rule == "lavis" else torch.full_like(ids[:, :1], self.bos_id)
        cache, cache_name = DynamicCache(config=language_model.config), cache_argument(language_model)
        attention = [mask.repeat_interleave(num_beams, dim=0)]
        with self.autocast():
            embeds = self.input_embeds(ids, query).repeat_interleave(num_beams, dim=0)

            def step(tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
                if rows is None:
                    inputs = {"inputs_embeds": embeds}
                else:
                    cache.reorder_cache(rows)
                    attention[0] = torch.cat([attention[0][rows], torch.ones_like(tokens)], dim=1)
                    inputs = {"input_ids": tokens}
                return language_model(**inputs, attention_mask=attention[0], use_cache=True, return_dict=True,
                                      **{cache_name: cache}).logits[:, -1, :]

            best = beam_search(step, counted, num_beams=num_beams, max_length=counted.shape[1] + max_new_tokens,
                               min_length=counted.shape[1] + min_new_tokens, eos_token_id=self.eos_id,
                               pad_token_id=self.pad_id, repetition_penalty=repetition_penalty,
                               length_penalty=length_penalty, rule=rule)
        return self.decode([row[counted.shape[1]:].tolist() for row in best])

    def start_length(self, prompt: str) -> int:
        """The start token and the prompt's tokens: what CapFilt's sampling lengths count before new tokens."""
        return 1 + len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])


class Blip2Captioner(Blip2Generator):
    task = "caption"
    default_prompt = CAPTION_PROMPT

    def caption(self, images, prompt: str = CAPTION_PROMPT, num_beams: int = 5, max_new_tokens: int = 30,
                min_new_tokens: int = 1, length_penalty: float = 1.0, repetition_penalty: float = 1.0,
                image_states: torch.Tensor | None = None, beam_rule: str | None = "toolbox") -> list[str]:
        """The toolbox's BLIP-2 protocol (beam 5, up to 30 new tokens, at least 1); LAVIS's COCO evaluation is
        min_new_tokens=4 (its min_length 8 counts the prompt's 4 tokens) at 364 px. The prompt is not part of the
        returned caption. `beam_rule` scores finished beams as the upstream's transformers did (on OPT): "toolbox"
        (4.33: over a start placeholder and the new tokens, stopping a step later) or "lavis" (4.26: over the prompt
        and the new tokens); None: transformers 5's own beam search (over the new tokens, the end included)."""
        states = self.encode_images(images) if image_states is None else image_states
        query = self.query_embeds(states)
        if beam_rule is None or not self.decoder_only:  # T5's: transformers' generate (no upstream fixture to match)
            return self.generate(query, [prompt] * query.shape[0], num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                 length_penalty=length_penalty, repetition_penalty=repetition_penalty,
                                 do_sample=False)
        return self.beam_generate(query, [prompt] * query.shape[0], beam_rule, num_beams=num_beams,
                                  max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                  length_penalty=length_penalty, repetition_penalty=repetition_penalty)

    def sample(self, images, sample_ids: Sequence[str], seed: int = DEFAULT.seed,
               num_captions: int = DEFAULT.num_captions, prompt: str | None = None, top_p: float = DEFAULT.top_p,
               top_k: int = DEFAULT.top_k, repetition_penalty: float = DEFAULT.repetition_penalty,
               max_length: int = DEFAULT.max_length, min_length: int = DEFAULT.min_length,
               image_states: torch.Tensor | None = None) -> list[list[str]]:
        """CapFilt's synthetic captions, as BLIP's Captioner.sample: caption j of a sample depends only on
        (seed, sample id, j) and the model. Lengths count the start token and the prompt."""
        if len(sample_ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(sample_ids)} sample ids")
        if num_captions < 1:
            raise ValueError("num_captions must be at least 1")
        prompt = CAPTION_PROMPT if prompt is None else prompt
        start = self.start_length(prompt)
        if max_length <= start:
            raise ValueError(f"max_length {max_length} leaves no new token after the prompt ({start} tokens)")
        states = self.encode_images(images) if image_states is None else image_states
        query = self.query_embeds(states)  # once per image; its N rows read it
        rows = torch.arange(len(sample_ids), device=self.device).repeat_interleave(num_captions)
        seeds = [derive_seed(seed, sid, j) for sid in sample_ids for j in range(num_captions)]
        # The processor sees the whole input (the <image> tokens, the start token and the prompt) before new tokens.
        prefix = self.queries + len(self.tokenizer(prompt)["input_ids"]) if self.decoder_only else 1
        nucleus = SeededNucleus(row_uniforms(seeds, max_length), prefix, top_p=top_p, top_k=top_k)
        texts = self.generate(query, [prompt] * len(rows), rows=rows, do_sample=False, num_beams=1,
                              max_new_tokens=max_length - start, min_new_tokens=max(0, min_length - start),
                              repetition_penalty=repetition_penalty, logits_processor=LogitsProcessorList([nucleus]))
        return [texts[i * num_captions:(i + 1) * num_captions] for i in range(len(sample_ids))]


class Blip2Answerer(Blip2Generator):
    task = "vqa"

    def answer(self, images, questions: Sequence[str], prompt: str = VQA_PROMPT, num_beams: int = 5,
               max_new_tokens: int = 10, min_new_tokens: int = 1, length_penalty: float = -1.0,
               image_states: torch.Tensor | None = None, beam_rule: str | None = "toolbox") -> list[str]:
        """BLIP-2's zero-shot VQA: the question in the prompt, beam 5, up to 10 new tokens, length penalty -1
        (short answers); the answers are normalised by the VQA metric as BLIP's are. `beam_rule`: as
        `Blip2Captioner.caption`'s (the toolbox's by default; None for transformers 5's own)."""
        if len(questions) != len(images):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        states = self.encode_images(images) if image_states is None else image_states
        query = self.query_embeds(states)
        texts = [prompt.format(q) for q in questions]
        if beam_rule is None or not self.decoder_only:
            return self.generate(query, texts, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                 min_new_tokens=min_new_tokens, length_penalty=length_penalty, do_sample=False)
        return self.beam_generate(query, texts, beam_rule, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                  min_new_tokens=min_new_tokens, length_penalty=length_penalty)

    def rank(self, *args, **kwargs):
        raise ValueError("BLIP-2 answers VQA by generation (protocol mode: generate); ranking over an answer list is "
                         "BLIP's protocol")
