"""How CapFilt draws synthetic captions: `Sampling`, BLIP's CapFilt defaults, and the captioning prompt.

The one place these defaults are written. Torch-free, so a command line builds its options from it without loading
torch; `models.captioner.Captioner.sample` and the CapFilt stage read the same fields.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

PROMPT = "a picture of "  # BLIP's captioning prompt; stripped from every returned caption


@dataclass(frozen=True)
class Sampling:
    """How synthetic captions are drawn (BLIP's CapFilt defaults; see PROTOCOLS.md)."""

    num_captions: int = 1  # BLIP used 1 per image, BLIP-2 10
    seed: int = 0
    top_p: float = 0.9
    top_k: int = 50  # transformers' sampling default, which BLIP's sampling ran with
    repetition_penalty: float = 1.1
    max_length: int = 30  # tokens, counting the start token ([DEC], or BLIP-2's) and the prompt, as BLIP counts them
    min_length: int = 10
    prompt: str | None = None  # None: the captioner's own (BLIP's PROMPT, BLIP-2's "a photo of")

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT = Sampling()
