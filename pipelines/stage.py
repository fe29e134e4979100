"""The CapFilt model stage: captioner then filter over one decoded batch. Plain Python; the wiring wraps it in a Ray actor."""
from __future__ import annotations

from models.captioner import Captioner
from models.device import set_threads
from models.matcher import Matcher
from models.patches import Kernels
from models.sampling_config import Sampling
from pipelines.decode import DecodedBatch

__all__ = ["CapFiltStage", "Kernels", "Sampling"]


class CapFiltStage:
    """`__init__` loads the captioner and the filter; `__call__(batch)` returns the batch's rows with the model
    columns of its decoded samples filled in."""

    def __init__(self, captioner: str, filter: str, sampling: Sampling = Sampling(), device: str = "auto",
                 precision: str = "auto", threads: int | None = None, kernels: Kernels = Kernels()):
        set_threads(threads, device)
        self.sampling = sampling
        self.captioner = Captioner.load(captioner, device=device, precision=precision, kernels=kernels)
        self.filter = Matcher.load(filter, device=device, precision=precision, kernels=kernels)

    @property
    def image_sizes(self) -> list[int]:
        return sorted({self.captioner.image_size, self.filter.image_size})

    @property
    def embedding_dim(self) -> int:
        return int(self.filter.model.config.image_text_hidden_size)

    def info(self) -> dict:
        """The models (names, fingerprints), where they run, and what the decoding and the schema need of them."""
        return {"captioner": self.captioner.checkpoint.describe(), "filter": self.filter.checkpoint.describe(),
                "device": str(self.captioner.device), "precision": self.captioner.precision,
                "image_sizes": self.image_sizes, "embedding_dim": self.embedding_dim}

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
        synthetic = self.captioner.sample(
            batch.images[self.captioner.image_size], sample_ids, seed=s.seed, num_captions=s.num_captions,
            prompt=s.prompt, top_p=s.top_p, top_k=s.top_k, repetition_penalty=s.repetition_penalty,
            max_length=s.max_length, min_length=s.min_length,
        )
        texts = [([w] if w is not None else []) + list(caps) for w, caps in zip(web, synthetic)]
        scores = self.filter.score(batch.images[self.filter.image_size], texts)
        cursor = 0
        for i, row in enumerate(rows):
            if web[i] is not None:
                row["web_itm"], row["web_itc"] = float(scores.itm[cursor]), float(scores.itc[cursor])
                cursor += 1
            row["synthetic"] = [
                {"text": text, "itm": float(scores.itm[cursor + j]), "itc": float(scores.itc[cursor + j])}
                for j, text in enumerate(synthetic[i])
            ]
            cursor += len(synthetic[i])
            row["image_embedding"] = scores.image_embeddings[i]
            out[batch.ok[i]] = row
        return out
