"""NLVR2: whether a sentence is true of a pair of images (`NlvrReasoner`, over `BlipForNlvr`)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.base import BlipRole

TEXT_MAX_LENGTH = 35  # the toolbox's BlipNLVR max_txt_len


class NlvrReasoner(BlipRole):
    task = "nlvr"

    @torch.inference_mode()
    def true_probability(self, left, right, sentences: Sequence[str], image_states: torch.Tensor | None = None
                         ) -> np.ndarray:
        """p(sentence i is true of left[i] and right[i]) as float32 (B,). The vision encoder runs once per image
        (all left and right images in one batch), or not at all when `image_states` (B, 2, N, D) are given."""
        if not len(left) == len(right) == len(sentences):
            raise ValueError(f"{len(left)} left images, {len(right)} right images and {len(sentences)} sentences")
        if not len(sentences):
            return np.zeros(0, dtype=np.float32)
        if image_states is None:
            both = np.concatenate([np.asarray(left), np.asarray(right)])
            states = self.encode_images(both)
            image_states = torch.stack([states[: len(left)], states[len(left):]], dim=1)
        ids, mask = self.tokenize(sentences, TEXT_MAX_LENGTH)  # [CLS] stays first, as in the toolbox's BlipNLVR
        with self.autocast():
            logits = self.model(input_ids=ids, attention_mask=mask, image_states=image_states).float()
        return torch.softmax(logits, dim=-1)[:, 1].cpu().numpy().astype(np.float32)

    def predict(self, left, right, sentences: Sequence[str]) -> list[dict]:
        """[{'pred_label': bool, 'score': p(true)}] per pair, the toolbox's face (its label is the argmax)."""
        return [{"pred_label": bool(p > 0.5), "score": float(p)}
                for p in self.true_probability(left, right, sentences)]
