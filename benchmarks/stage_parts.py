"""Where the CapFilt stage's time goes against the roofline: each part's seconds, FLOPs and excess over FLOPs / peak.

    .venv/bin/python benchmarks/stage_parts.py --size base     # BLIP-base, random weights (about 1 min)

One batch of 8 images, N=1, captions forced to 20 new tokens, as in `capfilt_bench.py` (whose shards, sampling and
peak it uses). Each part is timed by a wrapper around its forward; its FLOPs are counted by torch's FlopCounterMode
in a separate call, so the counter's cost never enters a time. The excess of a part is its seconds minus its FLOPs
at the bf16 peak: the time a perfect kernel would not have spent. Rows marked '-' are inside a ViT row. The
ViT attention core is the image-by-image bf16 path of `models/patches.py` (CPUs with bf16); elsewhere that row is
empty. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import capfilt_bench as bench
import models.patches
from pipelines.batches import shard_batches
from pipelines.stage import CapFiltStage


class Parts:
    """Seconds and FLOPs per named part, from wrappers around the parts' callables."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.flops: dict[str, float] = collections.defaultdict(float)
        self.counting = False
        self.order: list[str] = []
        self._wrapped: list[tuple[object, str, object]] = []  # (owner, attribute, what its own __dict__ held)

    def wrap(self, name: str, owner, attribute: str) -> None:
        inner = getattr(owner, attribute)
        if name not in self.order:
            self.order.append(name)
        self._wrapped.append((owner, attribute, vars(owner).get(attribute, _ABSENT)))

        def timed(*args, **kwargs):
            if self.counting:
                with FlopCounterMode(display=False) as counter:
                    out = inner(*args, **kwargs)
                self.flops[name] += counter.get_total_flops()
                return out
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            return out

        setattr(owner, attribute, timed)

    def restore(self) -> None:
        """Undo every wrap, last first (the module-level attention function included)."""
        for owner, attribute, own in reversed(self._wrapped):
            if own is _ABSENT:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)
        self._wrapped.clear()


_ABSENT = object()


def instrument(stage: CapFiltStage) -> Parts:
    parts = Parts()
    for role, name in ((stage.captioner, "captioner"), (stage.filter, "filter")):
        vision = role.model.vision_model
        parts.wrap(f"{name} ViT", vision, "forward")
        for layer in vision.encoder.layers:
            for linear in (layer.self_attn.qkv, layer.self_attn.projection, layer.mlp.fc1, layer.mlp.fc2):
                parts.wrap(f"  {name} ViT: its linear layers", linear, "forward")
    parts.wrap("  both ViTs: attention core (q k^T, softmax, p v)", models.patches, "attention_per_image")
    parts.wrap("captioner: decoding (20 tokens)", stage.captioner, "generate")
    parts.wrap("filter: ITM (image-grounded text encoder)", stage.filter, "itm")
    parts.wrap("filter: ITC text encoder", stage.filter, "text_embeddings")
    return parts


def measure(size: str, repeats: int) -> tuple[list[tuple[str, float, float]], float, float, float]:
    """(part, median seconds, FLOPs) rows, the stage's median seconds per call, its FLOPs per call, the bf16 peak."""
    peak = max(bench.matmul_peak(torch.bfloat16).values()) * 1e9
    stage = CapFiltStage(f"{size}-random_caption", f"{size}-random_retrieval")
    stage.sampling = bench.sampling(bench.prompt_length(stage), 1)
    with tempfile.TemporaryDirectory() as tmp:
        shard = bench.make_shards(Path(tmp), 1, 8)[0]
        batch = next(shard_batches("parts", str(shard), stage.image_sizes, 8))
    stage(batch)  # warm
    with FlopCounterMode(display=False) as counter:
        stage(batch)
    total_flops = counter.get_total_flops()
    parts = instrument(stage)
    try:
        parts.counting = True
        stage(batch)
        parts.counting = False
        runs = []
        for _ in range(repeats):
            parts.seconds.clear()
            start = time.perf_counter()
            stage(batch)
            runs.append((time.perf_counter() - start, dict(parts.seconds)))
    finally:
        parts.restore()
    rows = [(name, statistics.median(run.get(name, 0.0) for _, run in runs), parts.flops[name])
            for name in parts.order]
    return rows, statistics.median(total for total, _ in runs), total_flops, peak


def table(rows, total: float, total_flops: float, peak: float) -> str:
    out = [f"bf16 peak {peak / 1e9:,.0f} GFLOP/s; one stage call (8 images, N=1): {total:.3f} s, "
           f"{8 / total:.3f} images/s, {total_flops / 8 / 1e9:.1f} GFLOP per image: "
           f"**{total_flops / peak / total:.0%} of the roofline**", "",
           "| part | seconds | share of the call | GFLOP | GFLOP/s | excess over its FLOPs at the peak (s) |",
           "|---|---|---|---|---|---|"]
    for name, seconds, flops in rows:
        rate = f"{flops / seconds / 1e9:,.0f}" if flops and seconds else ""
        out.append(f"| {name.replace('  ', '- ', 1) if name.startswith('  ') else name} | {seconds:.3f} | "
                   f"{seconds / total:.0%} | {flops / 1e9:,.0f} | {rate} | {seconds - flops / peak:.3f} |")
    rest = total - sum(seconds for name, seconds, _ in rows if not name.startswith("  "))
    out.append(f"| the rest (the stage's own code) | {rest:.3f} | {rest / total:.0%} | | | |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["base", "tiny"], default="base")
    p.add_argument("--repeats", type=int, default=3, help="timed stage calls (medians are reported)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    print(table(*measure(args.size, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
