"""BLIP-2's filter (transformers' `Blip2ForImageTextRetrieval`): the Q-Former's ITM probability and ITC similarity.

ITC is the largest cosine between the text's [CLS] embedding and the 32 query embeddings of the image; ITM is the
two-way head averaged over the 32 query positions of the image-grounded Q-Former. One vision pass per image serves
any number of texts, as BLIP's filter does. Texts start with [CLS] for both, as in LAVIS.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.base import Role
from models.matcher import MatchScores

TEXT_MAX_LENGTH = 35  # as BLIP's filter; see docs/PROTOCOLS.md for LAVIS's own


class QFormerMatcher(Role):
    task = "retrieval"
    family = "blip2"

    @torch.inference_mode()
    def image_features(self, images, image_states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(vision states for ITM, the normalised query embeddings (B, 32, D) for ITC)."""
        states = self.encode_images(images) if image_states is None else image_states
        mask = torch.ones(states.shape[:-1], dtype=torch.long, device=self.device)
        with self.autocast():
            queries = self.model.query_tokens.expand(states.shape[0], -1, -1)
            out = self.model.qformer(query_embeds=queries, encoder_hidden_states=states, encoder_attention_mask=mask,
                                     return_dict=True).last_hidden_state
            embedding = self.model.vision_projection(out)
        return states, F.normalize(embedding.float(), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """ITC text embeddings: the Q-Former's text transformer alone, [CLS] projected and normalised."""
        ids, mask = self.tokenize(texts, TEXT_MAX_LENGTH)
        with self.autocast():
            states = self.model.qformer(query_embeds=self.model.embeddings(input_ids=ids), query_length=0,
                                        attention_mask=mask, return_dict=True).last_hidden_state
            embedding = self.model.text_projection(states[:, 0, :])
        return F.normalize(embedding.float(), dim=-1)

    @torch.inference_mode()
    def itm(self, image_states: torch.Tensor, texts: Sequence[str], image_index: torch.Tensor | None = None,
            logit: bool = False) -> torch.Tensor:
        """p(match) of text t against image_states[image_index[t]] (default: image_states[t]); with `logit`, the
        head's "match" logit averaged over the queries (BLIP-2's retrieval rerank adds it to ITC)."""
        ids, mask = self.tokenize(texts, TEXT_MAX_LENGTH)
        rows = torch.arange(len(texts), device=self.device) if image_index is None else image_index
        states = image_states[rows]
        n_queries = self.model.query_tokens.shape[1]
        with self.autocast():
            queries = self.model.query_tokens.expand(len(texts), -1, -1)
            embeds = self.model.embeddings(input_ids=ids, query_embeds=queries)
            mask = torch.cat([torch.ones(len(texts), n_queries, dtype=mask.dtype, device=self.device), mask], dim=1)
            out = self.model.qformer(query_embeds=embeds, query_length=n_queries, attention_mask=mask,
                                     encoder_hidden_states=states,
                                     encoder_attention_mask=torch.ones(states.shape[:-1], dtype=torch.long,
                                                                       device=self.device),
                                     return_dict=True).last_hidden_state
            logits = self.model.itm_head(out[:, :n_queries, :]).float().mean(dim=1)
        return logits[:, 1] if logit else torch.softmax(logits, dim=-1)[:, 1]

    def score(self, images, texts: Sequence[Sequence[str]], image_states: torch.Tensor | None = None) -> MatchScores:
        """Score texts[i] (any number, possibly none) against images[i]. The image embedding kept per image is the
        normalised mean of its 32 query embeddings (one vector for nearest-neighbour search; ITC is the max)."""
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} lists of texts")
        image_index = np.fromiter((i for i, group in enumerate(texts) for _ in group), dtype=np.int64)
        flat = [text for group in texts for text in group]
        states, queries = self.image_features(images, image_states)
        image_embeddings = F.normalize(queries.mean(dim=1), dim=-1).cpu().numpy()
        dim = queries.shape[-1]
        if not flat:
            empty = np.zeros(0, dtype=np.float32)
            return MatchScores(empty, empty, np.zeros((0, dim), np.float32), image_embeddings, image_index)
        index = torch.as_tensor(image_index, device=self.device)
        text_embeddings = self.text_embeddings(flat)
        itc = torch.einsum("tqd,td->tq", queries[index], text_embeddings).max(dim=1).values
        itm = self.itm(states, flat, image_index=index)
        return MatchScores(itm=itm.cpu().numpy().astype(np.float32), itc=itc.cpu().numpy().astype(np.float32),
                           text_embeddings=text_embeddings.cpu().numpy(), image_embeddings=image_embeddings,
                           image_index=image_index)
