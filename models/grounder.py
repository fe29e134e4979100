"""RefCOCO grounding: the box a referring expression names (`Grounder`, over `BlipForGrounding`), decoded as the
toolbox's BlipGrounding does: 4 greedy tokens (cx, cy, w, h) over the bin tokens only."""
from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np
import torch

from models.base import BlipRole
from models.loading import Checkpoint, ModelLoadError
from models.task_models import BOX_PREFIX, GROUNDING_BINS, box_token_ids

TEXT_MAX_LENGTH = 128  # the toolbox's BlipGrounding
_PUNCTUATION = str.maketrans({c: None for c in string.punctuation})


def clean_expression(text: str) -> str:
    """The toolbox's CleanCaption in its RefCOCO test pipeline: stripped, punctuation removed, runs of spaces
    made one, lower-cased."""
    return re.sub(r"\s{2,}", " ", text.strip().translate(_PUNCTUATION)).lower()


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


class Grounder(BlipRole):
    task = "grounding"

    def __init__(self, checkpoint: Checkpoint, **kwargs):
        super().__init__(checkpoint, **kwargs)
        self.bins = int(getattr(self.model.config, "grounding_bins", GROUNDING_BINS))
        ids = box_token_ids(self.tokenizer, self.bins)
        if self.tokenizer.unk_token_id in ids or ids[1:] != list(range(ids[1], ids[1] + self.bins + 1)):
            raise ModelLoadError(f"{checkpoint.spec.name!r}: its tokenizer lacks the box tokens {BOX_PREFIX} and "
                                 f"[unused340] ... [unused{340 + self.bins}] in one run, which the grounding head "
                                 "decodes into")
        self.prefix_id, self.first_bin = ids[0], ids[1]

    def bin_range(self) -> tuple[int, int]:
        return self.first_bin, self.first_bin + self.bins

    def target_ids(self, boxes: torch.Tensor) -> torch.Tensor:
        """Unit xyxy boxes (B, 4) -> the decoder's input (B, 5): the prefix, then cx, cy, w, h as bin tokens
        (truncated, as the toolbox's `.long()`)."""
        bins = (xyxy_to_cxcywh(boxes) * self.bins).long() + self.first_bin
        return torch.cat([bins.new_full((bins.shape[0], 1), self.prefix_id), bins], dim=1)

    @torch.inference_mode()
    def ground(self, images, expressions: Sequence[str], image_states: torch.Tensor | None = None) -> np.ndarray:
        """Boxes (B, 4) float32, xyxy in [0, 1] of the image, for expression i in image i."""
        if len(images) != len(expressions):
            raise ValueError(f"{len(images)} images but {len(expressions)} expressions")
        if not len(expressions):
            return np.zeros((0, 4), dtype=np.float32)
        states = self.encode_images(images) if image_states is None else image_states
        ids, mask = self.tokenize([clean_expression(t) for t in expressions], TEXT_MAX_LENGTH)
        with self.autocast():
            encoder_states, encoder_mask = self.model.fuse(states, ids, mask)
            box = ids.new_full((len(expressions), 1), self.prefix_id)
            for _ in range(4):  # the toolbox re-runs the decoder over the whole prefix at each step; so does this
                logits = self.model.box_logits(box, encoder_states, encoder_mask, self.bin_range())
                box = torch.cat([box, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        unit = (box[:, 1:] - self.first_bin).float() / self.bins
        return cxcywh_to_xyxy(unit).clamp(0, 1).cpu().numpy().astype(np.float32)
