"""The CapFilt model stage: captioner, then filter, then (optionally) a CLIP scorer over one decoded batch.
Plain Python; the wiring wraps it in a Ray actor.

The captioner and the filter may be of either family (BLIP or BLIP-2), in any mix. When both hold the same vision
weights (BLIP-2's frozen ViT-g; compared tensor by tensor at load, never by name) and read the same image size, the
filter uses the captioner's vision encoder: one copy in memory and one vision pass per image for both.
"""
from __future__ import annotations

from models.device import set_threads
from models.inference import load_role
from models.patches import Kernels
from models.sampling_config import Sampling
from pipelines.decode import DecodedBatch

__all__ = ["CapFiltStage", "Kernels", "Sampling"]


class CapFiltStage:
    """`__init__` loads the captioner, the filter and the optional scorer; `__call__(batch)` returns the batch's
    rows with the model columns of its decoded samples filled in."""

    def __init__(self, captioner: str, filter: str, sampling: Sampling = Sampling(), device: str = "auto",
                 precision: str = "auto", threads: int | None = None, kernels: Kernels = Kernels(),
                 scorer: str | None = None):
        set_threads(threads, device)
        self.sampling = sampling
        self.captioner = load_role(captioner, "caption", device=device, precision=precision, kernels=kernels)
        self.filter = load_role(filter, "retrieval", device=device, precision=precision, kernels=kernels)
        self.scorer = None if scorer is None else load_role(scorer, "similarity", device=device, precision=precision)
        self.shared_vision = self.filter.share_vision(self.captioner)
        self.prompt = sampling.prompt if sampling.prompt is not None else self.captioner.default_prompt

    @property
    def image_sizes(self) -> list[int]:
        roles = [self.captioner, self.filter] + ([self.scorer] if self.scorer else [])
        return sorted({role.image_size for role in roles})

    @property
    def embedding_dim(self) -> int:
        return self.filter.embedding_dim

    def info(self) -> dict:
        """The models (names, families, fingerprints), where they run, and what the decoding and the schema need."""
        return {"captioner": self.captioner.checkpoint.describe(), "filter": self.filter.checkpoint.describe(),
                "scorer": self.scorer.checkpoint.describe() if self.scorer else None,
                "device": str(self.captioner.device), "precision": self.captioner.precision,
                "image_sizes": self.image_sizes, "embedding_dim": self.embedding_dim,
                "shared_vision": self.shared_vision, "prompt": self.prompt}

    def __call__(self, batch: DecodedBatch) -> list[dict]:
        """One row per row of the batch, in its order: undecoded samples as they are, decoded ones scored.

        A sample's result does not depend on which other samples are processed with it.
        """
        out = list(batch.rows)
        if not batch.ok:
            return out
        rows = [dict(batch.rows[i]) for i in batch.ok]
        web = batch.captions
        sample_ids = [f"{row['shard']}/{row['key']}" for row in rows]
        s = self.sampling
        pixels = batch.images[self.captioner.image_size]
        states = self.captioner.encode_images(pixels) if self.shared_vision else None
        synthetic = self.captioner.sample(
            pixels, sample_ids, seed=s.seed, num_captions=s.num_captions, prompt=self.prompt, top_p=s.top_p,
            top_k=s.top_k, repetition_penalty=s.repetition_penalty, max_length=s.max_length,
            min_length=s.min_length, image_states=states,
        )
        texts = [([w] if w is not None else []) + list(caps) for w, caps in zip(web, synthetic)]
        scores = self.filter.score(batch.images[self.filter.image_size], texts, image_states=states)
        clip = (self.scorer.similarity(batch.images[self.scorer.image_size], texts) if self.scorer
                else [None] * len(scores.itm))
        cursor = 0
        for i, row in enumerate(rows):
            if web[i] is not None:
                row["web_itm"], row["web_itc"] = float(scores.itm[cursor]), float(scores.itc[cursor])
                row["web_clip"] = _float(clip[cursor])
                cursor += 1
            row["synthetic"] = [
                {"text": text, "itm": float(scores.itm[cursor + j]), "itc": float(scores.itc[cursor + j]),
                 "clip": _float(clip[cursor + j])}
                for j, text in enumerate(synthetic[i])
            ]
            cursor += len(synthetic[i])
            row["image_embedding"] = scores.image_embeddings[i]
            out[batch.ok[i]] = row
        return out


def _float(value) -> float | None:
    return None if value is None else float(value)
