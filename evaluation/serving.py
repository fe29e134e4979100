"""The model roles of an evaluation: `RoleServer` wraps one role (BLIP's Captioner, Matcher or Answerer, BLIP-2's
Blip2Captioner, QFormerMatcher or Blip2Answerer; the NLVR2 reasoner, the grounder) with batched methods; `ModelHost` holds the servers of every role a
suite needs.

Plain Python: `evaluation/actors.py` wraps ModelHost with `ray.remote`, as the CapFilt job wraps its stage (one
actor holding every model, one per GPU), so evaluation runs the same role code as CapFilt. Images arrive as uint8
batches at the role's input size.
"""
from __future__ import annotations


from collections.abc import Sequence

import numpy as np
import torch

from evaluation.calls import Method
from models.device import DeviceError, set_threads
from models.inference import load_role
from models.loading import ModelLoadError


class RoleServer:
    """A loaded role. A load failure is kept, not raised, so the driver can report it in one sentence."""

    def __init__(self, name: str, task: str, device: str = "auto", precision: str = "auto",
                 threads: int | None = None, image_size: int | None = None):
        """`image_size`: the vision encoder's input size (None: the checkpoint's), a protocol's `image_size`."""
        set_threads(threads, device)
        self.error = None
        self.role = None
        self.image_states: dict[int, torch.Tensor] = {}  # retrieval: vision states by image index, for the ITM rerank
        self.candidates: list[str] | None = None
        try:
            self.role = load_role(name, task, device=device, precision=precision, image_size=image_size or None)
        except (ModelLoadError, DeviceError) as exc:
            self.error = str(exc)

    def info(self) -> dict:
        if self.role is None:
            return {"error": self.error}
        return {**self.role.checkpoint.describe(), "device": str(self.role.device), "precision": self.role.precision,
                "image_size": self.role.image_size}

    # captioner
    def caption(self, images: np.ndarray, settings: dict) -> list[str]:
        """`settings`: the protocol's generation settings, keyword arguments of the family's caption()."""
        return self.role.caption(images, **settings)

    # answerer
    def answer(self, images: np.ndarray, questions: Sequence[str], settings: dict) -> list[str]:
        """`settings`: the protocol's generation settings, keyword arguments of the family's answer()."""
        return self.role.answer(images, questions, **settings)

    def set_candidates(self, candidates: list[str]) -> int:
        self.candidates = list(candidates)
        return len(self.candidates)

    def rank(self, images: np.ndarray, questions: Sequence[str], k: int) -> list[str]:
        return self.role.rank(images, questions, self.candidates, k=k)

    # matcher
    def index_images(self, indices: Sequence[int], images: np.ndarray) -> np.ndarray:
        """ITC embeddings of the images: (B, D) for BLIP, the normalised query embeddings (B, 32, D) for BLIP-2 (its
        ITC is the largest over the queries); their vision states stay here for `itm_logits`."""
        # BLIP's evaluation keeps every image's states as well: for BLIP base at 384 px, 0.9 MB an image in bf16.
        states, embeddings = self.role.image_features(images)
        for index, state in zip(indices, states):
            self.image_states[int(index)] = state
        return embeddings.cpu().numpy()

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        return self.role.text_embeddings(texts).cpu().numpy()

    def itm_logits(self, image_indices: Sequence[int], texts: Sequence[str]) -> np.ndarray:
        """The ITM head's "match" logit of each (indexed image, text) pair (BLIP-2: averaged over the queries): both
        families rerank with the logit, not p(match)."""
        unique = sorted({int(i) for i in image_indices})
        position = {index: p for p, index in enumerate(unique)}
        states = torch.stack([self.image_states[i] for i in unique])
        rows = torch.tensor([position[int(i)] for i in image_indices])
        return self.role.itm(states, texts, image_index=rows, logit=True).cpu().numpy()

    def clear_images(self) -> int:
        count = len(self.image_states)
        self.image_states.clear()
        return count

    # NLVR2 reasoner
    def nlvr(self, left: np.ndarray, right: np.ndarray, sentences: Sequence[str]) -> np.ndarray:
        return self.role.true_probability(left, right, sentences)

    # grounder
    def ground(self, images: np.ndarray, expressions: Sequence[str]) -> np.ndarray:
        return self.role.ground(images, expressions)


class ModelHost:
    """Every role of a run in one process: tasks run one after another, so one actor per GPU holds all the models
    (one CUDA context, one start-up) instead of one idle process per role."""

    def __init__(self, models: dict[str, tuple], device: str = "auto", precision: str = "auto",
                 threads: int | None = None):
        """`models`: {role: (model name, model task)} or {role: (model name, model task, image size or None)}."""
        self.servers = {role: RoleServer(name, task, device, precision, threads, *size)
                        for role, (name, task, *size) in models.items()}

    def info(self) -> dict[str, dict]:
        return {role: server.info() for role, server in self.servers.items()}

    def call(self, role: str, method: Method, *args):
        return getattr(self.servers[role], Method(method).value)(*args)
