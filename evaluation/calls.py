"""The calls a task makes on a model role: `Method`, the RoleServer methods by name.

Tasks name a call as `Method.ITM_LOGITS`, never as a string, so a typo fails on the driver (AttributeError, or
ValueError from `Method(name)` in the pool) before anything reaches an actor. Torch-free: tasks and the pools import
it without loading the models' libraries; `evaluation/serving.py` implements every member (a test checks it).
"""
from __future__ import annotations

from enum import Enum


class Method(str, Enum):
    CAPTION = "caption"  # captioner: (images, settings) -> captions
    ANSWER = "answer"  # answerer: (images, questions, settings) -> answers
    SET_CANDIDATES = "set_candidates"  # answerer: (candidates,) -> count, kept for RANK
    RANK = "rank"  # answerer: (images, questions, k) -> the best candidate per question
    INDEX_IMAGES = "index_images"  # matcher: (indices, images) -> ITC embeddings; states kept for ITM_LOGITS
    TEXT_EMBEDDINGS = "text_embeddings"  # matcher: (texts,) -> ITC embeddings
    ITM_LOGITS = "itm_logits"  # matcher: (image indices, texts) -> ITM match logits
    CLEAR_IMAGES = "clear_images"  # matcher: () -> how many image states were dropped
    NLVR = "nlvr"  # reasoner: (left images, right images, sentences) -> p(true) per pair
    GROUND = "ground"  # grounder: (images, expressions) -> unit xyxy boxes

    def __str__(self) -> str:
        return self.value
