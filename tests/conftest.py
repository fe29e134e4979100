"""Shared fixtures for the models-layer tests: tiny BLIP roles, real photographs, image bytes, call recorders.

Everything is built offline: tiny models come from the zoo's `tiny-random_*` names (random weights, 32 px),
photographs from scikit-image. Roles used for exact comparisons run in fp32.
"""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from models.answerer import Answerer
from models.captioner import Captioner
from models.loading import load_checkpoint
from models.matcher import Matcher
from tests import hostile

# The tiny models are latency-bound: one intra-op thread is as fast as two on an idle machine and avoids the
# 10-20x slowdown of OpenMP threads spinning against other processes (Ray workers, a parallel build) on 2 cores.
torch.set_num_threads(1)

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # camera is grayscale (H, W)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Five real photographs of different sizes as uint8 arrays (four RGB, one grayscale)."""
    return [getattr(skimage.data, name)() for name in PHOTO_NAMES]


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def encode():
    """encode(image, format, **save_options) -> the bytes Pillow writes (image: PIL image or array)."""
    return hostile.encode


def _role(cls, name: str, precision: str):
    return cls(load_checkpoint(name, task=cls.task), device="cpu", precision=precision)


@pytest.fixture(scope="session")
def captioner() -> Captioner:
    return _role(Captioner, "tiny-random_caption", "fp32")


@pytest.fixture(scope="session")
def matcher() -> Matcher:
    return _role(Matcher, "tiny-random_retrieval", "fp32")


@pytest.fixture(scope="session")
def answerer() -> Answerer:
    return _role(Answerer, "tiny-random_vqa", "fp32")


@pytest.fixture(scope="session")
def captioner_default() -> Captioner:
    """The tiny captioner at the default precision ("auto": bf16 on this CPU when it has native bf16)."""
    return Captioner(load_checkpoint("tiny-random_caption"), device="cpu")


@pytest.fixture(scope="session")
def matcher_default() -> Matcher:
    return Matcher(load_checkpoint("tiny-random_retrieval"), device="cpu")


@pytest.fixture
def record_forward():
    """record_forward(module) -> a list that receives the keyword arguments (tensors cloned) of every forward call.

    Hooks are removed when the test ends, so session-scoped models stay clean.
    """
    handles = []

    def attach(module: torch.nn.Module) -> list[dict]:
        calls: list[dict] = []

        def hook(_module, args, kwargs):
            recorded = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
            if args:  # positional input_ids / pixel_values, should a caller use them
                recorded.setdefault("args", tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args))
            calls.append(recorded)

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return calls

    yield attach
    for handle in handles:
        handle.remove()


@pytest.fixture
def spy(monkeypatch):
    """spy(obj, name) -> a list of (args, kwargs, result) for every call of obj.name during the test."""

    def attach(obj, name: str) -> list[tuple]:
        calls: list[tuple] = []
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            calls.append((args, kwargs, result))
            return result

        monkeypatch.setattr(obj, name, wrapper)
        return calls

    return attach
