"""The BLIP filter: image-text matching (ITM) probability and contrastive (ITC) similarity with embeddings."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.base import BlipRole
from models.patches import shared_image_rows

TEXT_MAX_LENGTH = 35  # BLIP's retrieval / filter text length


@dataclass
class MatchScores:
    """Scores of T texts against B images; text t belongs to image `image_index[t]`."""

    itm: np.ndarray  # (T,) float32, p(match) from the ITM head
    itc: np.ndarray  # (T,) float32, cosine of the projected [CLS] features
    text_embeddings: np.ndarray  # (T, D) float32, L2-normalised
    image_embeddings: np.ndarray  # (B, D) float32, L2-normalised
    image_index: np.ndarray  # (T,) int64


class Matcher(BlipRole):
    task = "retrieval"

    @torch.inference_mode()
    def image_features(self, images, image_states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(vision states for ITM, normalised image embeddings for ITC) from one vision pass (or the states given)."""
        states = self.encode_images(images) if image_states is None else image_states
        with self.autocast():
            embedding = self.model.vision_proj(states[:, 0, :])
        return states, F.normalize(embedding.float(), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """ITC text embeddings: the unimodal text encoder with [CLS] first, projected and normalised."""
        ids, mask = self.tokenize(texts, TEXT_MAX_LENGTH)  # the tokenizer's own [CLS] stays first
        with self.autocast():
            states = self.model.text_encoder(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
            embedding = self.model.text_proj(states[:, 0, :])
        return F.normalize(embedding.float(), dim=-1)

    @torch.inference_mode()
    def itm(self, image_states: torch.Tensor, texts: Sequence[str], image_index: torch.Tensor | None = None,
            logit: bool = False) -> torch.Tensor:
        """p(match) for text t against image_states[image_index[t]] (default: image_states[t]): the image-grounded
        encoder with [ENC] first. Texts of one image share its cross-attention keys/values. With `logit`, the
        head's raw "match" logit instead (BLIP's retrieval rerank adds it to the ITC similarity)."""
        ids, mask = self.tokenize(texts, TEXT_MAX_LENGTH, first_token=self.enc_id)
        rows = torch.arange(len(texts), device=self.device) if image_index is None else image_index
        with self.autocast(), shared_image_rows(self.model, image_states, rows) as encoder_states:
            states = self.model.text_encoder(
                input_ids=ids,
                attention_mask=mask,
                encoder_hidden_states=encoder_states,  # no encoder mask: every image token is valid
                return_dict=True,
            ).last_hidden_state
            logits = self.model.itm_head(states[:, 0, :]).float()
        return logits[:, 1] if logit else torch.softmax(logits, dim=-1)[:, 1]

    def score(self, images, texts: Sequence[Sequence[str]], image_states: torch.Tensor | None = None) -> MatchScores:
        """Score texts[i] (any number, possibly none) against images[i]; the vision encoder runs once per image."""
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} lists of texts")
        image_index = np.fromiter((i for i, group in enumerate(texts) for _ in group), dtype=np.int64)
        flat = [text for group in texts for text in group]
        states, image_embeddings = self.image_features(images, image_states)
        dim = image_embeddings.shape[-1]
        if not flat:
            empty = np.zeros(0, dtype=np.float32)
            return MatchScores(empty, empty, np.zeros((0, dim), np.float32), image_embeddings.cpu().numpy(), image_index)
        index = torch.as_tensor(image_index, device=self.device)
        text_embeddings = self.text_embeddings(flat)
        itc = (text_embeddings * image_embeddings[index]).sum(-1)
        itm = self.itm(states, flat, image_index=index)
        return MatchScores(
            itm=itm.cpu().numpy().astype(np.float32),
            itc=itc.cpu().numpy().astype(np.float32),
            text_embeddings=text_embeddings.cpu().numpy(),
            image_embeddings=image_embeddings.cpu().numpy(),
            image_index=image_index,
        )
