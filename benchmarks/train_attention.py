"""The ViT attention kernel in CPU training: torch's fused kernel against the math kernel training.loop uses on a
CPU, on the same pre-training job, run after run in alternation (the machine is shared: the ratio is the figure).

    .venv/bin/python -m shapeworld worlds/w0
    .venv/bin/python benchmarks/train_attention.py worlds/w0 [STEPS] [ROUNDS]

Prints each run's seconds and last ITM loss, the median of each kernel and their ratio.
"""
from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training import loop  # noqa: E402
from training.data import load_shards  # noqa: E402
from training.model import BlipTrainee, world_config, world_tokenizer  # noqa: E402

KERNELS = {"fused": lambda device: contextlib.nullcontext(), "math": loop.attention_kernel}


def main(world: str, steps: int = 60, rounds: int = 4) -> dict:
    torch.set_num_threads(2)
    tokenizer = world_tokenizer()
    config = world_config(tokenizer, "small")
    data = load_shards(f"{world}/web/*.tar", config.vision_config.image_size)
    recipe = loop.Recipe(loop.TASK_OBJECTIVES["pretrain"], epochs=steps * 64 / len(data), batch_size=64, bf16=True,
                         log_every=10 ** 9)
    seconds = {name: [] for name in KERNELS}
    for _ in range(rounds):
        for name, kernel in KERNELS.items():
            loop.attention_kernel = kernel  # what train() enters around each forward pass
            model = BlipTrainee.create(config, 0, tie=True)
            started = time.time()
            history = loop.train(model, tokenizer, data, recipe, log=lambda line: None)
            seconds[name].append(round(time.time() - started, 2))
            print(f"{name}: {seconds[name][-1]} s, itm {history[-1]['itm']}", flush=True)
    loop.attention_kernel = KERNELS["math"]
    median = {name: statistics.median(values) for name, values in seconds.items()}
    figures = {"steps": steps, "batch": 64, "rounds": rounds, "seconds": seconds, "median_s": median,
               "fused_over_math": round(median["fused"] / median["math"], 3)}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1], *(int(arg) for arg in sys.argv[2:4]))
