"""Per-sample seeded nucleus sampling: a sample's captions depend on (seed, sample id, caption index) only.

transformers' sampling draws from one global generator, so a caption would change with the batch it lands in.
Here every generated row owns a stream of uniforms drawn from its own generator, and the token is chosen by
inverse-CDF over the row's own top-k / top-p distribution. The choice is written back as a one-hot score so
`generate` runs in greedy mode and keeps handling caching, min length and end of sequence.
"""
from __future__ import annotations

import hashlib

import torch

from models.sampling_config import DEFAULT


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the job seed and the identity of what is being sampled (stable across processes)."""
    text = "\x1f".join([str(int(seed))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def row_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """(rows, steps) uniforms in [0, 1); row r comes from a generator seeded with seeds[r]."""
    out = torch.empty(len(seeds), steps, dtype=torch.float64)
    generator = torch.Generator()
    for row, seed in enumerate(seeds):
        generator.manual_seed(seed)
        out[row] = torch.rand(steps, generator=generator, dtype=torch.float64)
    return out


class SeededNucleus:
    """A logits processor: top-k, then top-p, then an inverse-CDF draw with the row's own uniform."""

    def __init__(self, uniforms: torch.Tensor, prompt_length: int, top_p: float = DEFAULT.top_p,
                 top_k: int = DEFAULT.top_k):
        self.uniforms = uniforms
        self.prompt_length = prompt_length
        self.top_p = top_p
        self.top_k = top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        u = self.uniforms[:, step].to(scores.device)
        logits = scores.float()
        k = min(self.top_k, logits.shape[-1]) if self.top_k > 0 else logits.shape[-1]
        top_logits, top_ids = logits.topk(k, dim=-1)  # sorted, largest first
        probs = torch.softmax(top_logits.double(), dim=-1)
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= self.top_p, 0.0)  # the smallest prefix reaching top_p, at least 1
        cdf = probs.cumsum(-1)
        target = (u * cdf[:, -1]).unsqueeze(-1)
        position = torch.searchsorted(cdf, target, right=True).clamp_(max=k - 1)
        # Never pick a token the earlier processors forbade (e.g. [SEP] before min_length).
        position = torch.minimum(position, (probs > 0).sum(-1, keepdim=True) - 1)
        chosen = top_ids.gather(-1, position)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen, 0.0)
