"""Choices of the CPU training step that leave the recipe alone, each against its alternative on the same
pre-training job, run after run in alternation (the machine is shared: the ratio is the figure):

- `attention`: torch's fused SDPA kernel against the math kernel training.loop uses on a CPU;
- `optimizer`: AdamW's per-tensor loop (and per-tensor clipping norms) against the fused update training.loop uses.

    .venv/bin/python -m shapeworld worlds/w0
    .venv/bin/python benchmarks/train_step.py worlds/w0 [STEPS] [ROUNDS] [--compare attention|optimizer]

Prints each run's seconds and last ITM loss, the median of each variant and the ratio of the first to the second
(above 1: what training.loop uses is faster).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from training import loop
from training.data import load_shards
from training.job import TASK_OBJECTIVES
from training.model import BlipTrainee, world_config, world_tokenizer

# per comparison: {variant: (the loop function it replaces, the replacement)}, the loop's own choice second
COMPARISONS = {
    "attention": {"fused": ("attention_kernel", lambda device: contextlib.nullcontext()),
                  "math": ("attention_kernel", loop.attention_kernel)},
    "optimizer": {"per-tensor": ("fused_update", lambda device: False),
                  "fused": ("fused_update", loop.fused_update)},
}


def main(world: str, steps: int = 60, rounds: int = 4, compare: str = "attention") -> dict:
    torch.set_num_threads(2)
    tokenizer = world_tokenizer()
    config = world_config(tokenizer, "small")
    data = load_shards(f"{world}/web/*.tar", config.vision_config.image_size)
    recipe = loop.Recipe(TASK_OBJECTIVES["pretrain"], epochs=steps * 64 / len(data), batch_size=64, bf16=True,
                         log_every=10 ** 9)
    variants = COMPARISONS[compare]
    seconds = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            for name, (function, replacement) in variants.items():
                setattr(loop, function, replacement)  # what train() calls
                model = BlipTrainee.create(config, 0, tie=True)
                started = time.time()
                history = loop.train(model, tokenizer, data, recipe, log=lambda line: None)
                seconds[name].append(round(time.time() - started, 2))
                print(f"{name}: {seconds[name][-1]} s, itm {history[-1]['itm']}", flush=True)
    finally:
        for function, replacement in variants.values():
            setattr(loop, function, replacement)  # the loop's own choice is listed last
    median = {name: statistics.median(values) for name, values in seconds.items()}
    first, second = variants
    figures = {"compare": compare, "steps": steps, "batch": 64, "rounds": rounds, "seconds": seconds,
               "median_s": median, "ratio": round(median[first] / median[second], 3), "ratio_of": f"{first}/{second}"}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world")
    parser.add_argument("steps", nargs="?", type=int, default=60)
    parser.add_argument("rounds", nargs="?", type=int, default=4)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="attention")
    args = parser.parse_args()
    main(args.world, args.steps, args.rounds, args.compare)
