"""The CLIP scorer (transformers' `CLIPModel`): cosine similarity of L2-normalised image and text embeddings,
without CLIP's logit scale. BLIP-2's CapFilt ranks the web caption and the synthetic ones by it (ViT-L/14)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.base import Role

TEXT_MAX_LENGTH = 77  # CLIP's context


class ClipScorer(Role):
    task = "similarity"
    family = "clip"

    @torch.inference_mode()
    def image_embeddings(self, images) -> torch.Tensor:
        """(B, D) normalised: the vision tower's pooled output, projected."""
        with self.autocast():
            pooled = self.model.vision_model(pixel_values=self.pixel_values(images),
                                             interpolate_pos_encoding=self.image_size != self.native_image_size
                                             ).pooler_output
            embedding = self.model.visual_projection(pooled)
        return F.normalize(embedding.float(), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts, TEXT_MAX_LENGTH)
        with self.autocast():
            pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
            embedding = self.model.text_projection(pooled)
        return F.normalize(embedding.float(), dim=-1)

    def similarity(self, images, texts: Sequence[Sequence[str]]) -> np.ndarray:
        """(T,) float32: the cosine of each text of texts[i] with images[i], in the flattened order of `texts`."""
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} lists of texts")
        flat = [text for group in texts for text in group]
        if not flat:
            return np.zeros(0, dtype=np.float32)
        index = torch.as_tensor([i for i, group in enumerate(texts) for _ in group], device=self.device)
        cosine = (self.text_embeddings(flat) * self.image_embeddings(images)[index]).sum(-1)
        return cosine.cpu().numpy().astype(np.float32)
