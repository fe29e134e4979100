"""The training loop itself, plain torch: the same function runs in-process and inside a Ray Train worker.

A `Recipe` names the objectives and the schedule (AdamW, linear warm-up then cosine decay, as BLIP). Each step
draws a batch of images and one of each image's texts (or questions), from a generator seeded by the recipe, so a
run's batches are the same on one worker (its losses agree to about three decimals between runs of the small model
on a CPU: RESULTS.md). With several workers each takes every n-th sample of the epoch's order.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from training.data import BoxSet, ImagePairSet, LabelSet, PairSet, QuestionSet, pixel_values
from training.objectives import (OBJECTIVES, to_device, tokenize, tokenize_expressions, tokenize_questions,
                                 tokenize_sentences)

# objectives on data of their own (questions, labelled images, image pairs, boxes)
ALONE = ("vqa", "classify", "nlvr", "grounding")


@dataclass(frozen=True)
class Recipe:
    objectives: tuple[str, ...]
    epochs: float
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of the steps
    seed: int = 0
    log_every: int = 50  # steps
    bf16: bool = False  # autocast to bfloat16 (TrainJob sets it by models.device.resolve_precision)
    false_negative_margin: float = 0.0  # ITM hard negatives: see training/objectives.py

    def __post_init__(self):
        unknown = set(self.objectives) - set(OBJECTIVES) - set(ALONE)
        if unknown or not self.objectives:
            raise ValueError(f"unknown objectives {sorted(unknown)}; known: {', '.join(OBJECTIVES + ALONE)}")
        alone = set(ALONE) & set(self.objectives)
        if alone and len(self.objectives) > 1:
            raise ValueError(f"the {alone.pop()} objective trains alone (it needs its own kind of data)")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and lr must be positive")
        if not 0 <= self.false_negative_margin <= 2:
            raise ValueError("false_negative_margin is a cosine similarity gap in [0, 2], "
                             f"got {self.false_negative_margin}")

    def describe(self) -> dict:
        return asdict(self)


def schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def attention_kernel(device: torch.device):
    """On a CPU, the backward pass of torch's fused attention kernel is slow on the ViT's short sequences (37
    tokens): the math kernel trains the small model 1.16-1.23x faster in-process (benchmarks/train_step.py),
    less inside Ray Train's worker (RESULTS.md). Elsewhere torch chooses. The forward pass picks the kernel, and
    its backward follows."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()


def fused_update(device: torch.device) -> bool:
    """AdamW's fused step and foreach (batched) gradient norms for clipping, where torch has them, instead of
    per-tensor Python loops: the same update, 1.04-1.10x faster for the small model in-process on a CPU
    (benchmarks/train_step.py --compare optimizer; inside Ray Train's worker not seen through the noise)."""
    return device.type in ("cpu", "cuda")


def train(model, tokenizer, data: PairSet | QuestionSet | LabelSet | ImagePairSet | BoxSet, recipe: Recipe, log=print, rank: int = 0,
          world_size: int = 1, on_epoch=None) -> list[dict]:
    """Optimise `model` on `data`; returns one metrics dict per logged interval. `on_epoch(epoch, metrics)` is
    called at each epoch end (Ray Train reports through it)."""
    device = next(model.parameters()).device
    rng = np.random.default_rng([recipe.seed, 7])
    generator = torch.Generator().manual_seed(recipe.seed)
    per_epoch = max(1, len(data) // (recipe.batch_size * world_size))
    total = max(1, round(recipe.epochs * per_epoch))
    warmup = max(1, int(recipe.warmup * total))
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    fused = fused_update(device)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total, warmup))
    model.train()
    history, sums, count, started, order = [], {}, 0, time.time(), np.empty(0, dtype=np.int64)
    for step in range(total):
        if step % per_epoch == 0:
            order = rng.permutation(len(data))[rank::world_size]
        start = (step % per_epoch) * recipe.batch_size
        batch = order[start:start + recipe.batch_size]
        with attention_kernel(device), torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
            parts = _step_losses(model, tokenizer, data, batch, recipe, rng, generator, device)
        loss = sum(parts.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0, foreach=fused)
        optimizer.step()
        scheduler.step()
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value.item()
        count += 1
        epoch_end = (step + 1) % per_epoch == 0 or step + 1 == total
        if (step + 1) % recipe.log_every == 0 or epoch_end:
            elapsed = time.time() - started
            metrics = {"step": step + 1, "steps": total, "epoch": round((step + 1) / per_epoch, 2),
                       **{name: round(value / count, 4) for name, value in sums.items()},
                       "samples_per_second": round((step + 1) * recipe.batch_size / elapsed, 1)}
            history.append(metrics)
            log("train " + " ".join(f"{k} {v}" for k, v in metrics.items()))
            sums, count = {}, 0
            if epoch_end and on_epoch is not None:
                on_epoch(metrics)
    model.eval()
    return history


def _step_losses(model, tokenizer, data, batch, recipe: Recipe, rng, generator, device) -> dict[str, torch.Tensor]:
    if isinstance(data, ImagePairSet):  # (B, 2, S, S, 3) -> (B, 2, 3, S, S)
        pairs = data.images[batch]
        pixels = pixel_values(pairs.reshape(-1, *pairs.shape[2:])).unflatten(0, (len(batch), 2)).to(device)
        text = tokenize_sentences(tokenizer, [data.sentences[i] for i in batch], data.labels[batch])
        return model(pixels, to_device(text, device), recipe.objectives)
    pixels = pixel_values(data.images[batch]).to(device, non_blocking=True)
    if isinstance(data, BoxSet):
        expressions = [data.expressions[i][rng.integers(len(data.expressions[i]))] for i in batch]
        text = tokenize_expressions(tokenizer, expressions, data.boxes[batch])
        return model(pixels, to_device(text, device), recipe.objectives)
    if isinstance(data, LabelSet):
        return model(pixels, torch.from_numpy(data.labels[batch]).to(device), recipe.objectives)
    if isinstance(data, QuestionSet):
        answers = [data.answers[i][rng.integers(len(data.answers[i]))] for i in batch]
        text = tokenize_questions(tokenizer, [data.questions[i] for i in batch], answers)
    else:
        text = tokenize(tokenizer, [data.texts[i][rng.integers(len(data.texts[i]))] for i in batch])
    # through forward, so a DDP wrapper syncs gradients
    return model(pixels, to_device(text, device), recipe.objectives, generator, recipe.false_negative_margin)
