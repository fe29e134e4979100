"""The CapFilt model stage: captioner then filter over one decoded batch. Plain Python; the wiring wraps it in a Ray actor."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from models.captioner import PROMPT, Captioner
from models.matcher import Matcher


@dataclass(frozen=True)
class Sampling:
    """How synthetic captions are drawn (BLIP's CapFilt defaults; see PROTOCOLS.md)."""

    num_captions: int = 1  # BLIP used 1 per image, BLIP-2 10
    seed: int = 0
    top_p: float = 0.9
    top_k: int = 50  # transformers' sampling default, which BLIP's sampling ran with
    repetition_penalty: float = 1.1
    max_length: int = 30  # tokens, counting [DEC] and the prompt, as BLIP counts them
    min_length: int = 10
    prompt: str = PROMPT

    def as_dict(self) -> dict:
        return asdict(self)


class CapFiltStage:
    """`__init__` loads the captioner and the filter; `__call__(batch)` fills in the model columns of its rows."""

    def __init__(self, captioner: str, filter: str, sampling: Sampling = Sampling(), device: str = "auto",
                 precision: str = "auto", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.sampling = sampling
        self.captioner = Captioner.load(captioner, device=device, precision=precision)
        self.filter = Matcher.load(filter, device=device, precision=precision)

    @property
    def image_sizes(self) -> list[int]:
        return sorted({self.captioner.image_size, self.filter.image_size})

    @property
    def embedding_dim(self) -> int:
        return int(self.filter.model.config.image_text_hidden_size)

    def describe(self) -> dict:
        return {"captioner": self.captioner.checkpoint.describe(), "filter": self.filter.checkpoint.describe(),
                "device": str(self.captioner.device), "precision": self.captioner.precision}

    def __call__(self, batch: dict, subset: Sequence[int] | None = None,
                 with_errors: bool | None = None) -> list[tuple[int, dict]]:
        """(row position, row) for every row of the batch, or for the decoded samples at `subset` (positions in
        batch['ok']) plus, when `with_errors`, the rows that failed before the models (default: subset is None).

        A sample's result does not depend on which other samples are processed with it.
        """
        picks = range(len(batch["ok"])) if subset is None else list(subset)
        out: list[tuple[int, dict]] = []
        if subset is None if with_errors is None else with_errors:
            ok = set(batch["ok"])
            out.extend((i, row) for i, row in enumerate(batch["rows"]) if i not in ok)
        if not picks:
            return out
        positions = [batch["ok"][p] for p in picks]
        rows = [dict(batch["rows"][i]) for i in positions]
        web = [batch["captions"][p] for p in picks]
        cap_images = batch["images"][self.captioner.image_size][picks]
        filter_images = batch["images"][self.filter.image_size][picks]
        sample_ids = [f"{row['shard']}/{row['key']}" for row in rows]
        s = self.sampling
        synthetic = self.captioner.sample(
            cap_images, sample_ids, seed=s.seed, num_captions=s.num_captions, prompt=s.prompt, top_p=s.top_p,
            top_k=s.top_k, repetition_penalty=s.repetition_penalty, max_length=s.max_length, min_length=s.min_length,
        )
        texts = [([w] if w is not None else []) + list(caps) for w, caps in zip(web, synthetic)]
        scores = self.filter.score(filter_images, texts)
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
            out.append((positions[i], row))
        return out
