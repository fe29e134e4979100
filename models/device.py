"""Device and precision choice: one place decides where a model runs and in which number format."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp32")


class DeviceError(ValueError):
    """A device or precision the user asked for cannot be used on this host."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = device if isinstance(device, torch.device) else torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but this host has no CUDA device: use auto or cpu")
    return resolved


def cpu_has_fast_bf16() -> bool:
    # bf16 only pays off on CPUs with native bf16 dot products (AVX512-BF16 or AMX); elsewhere
    # autocast emulates it and is slower than fp32.
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on CUDA and on CPUs with native bf16, fp32 otherwise."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """Context for a forward pass: bf16 autocast (weights stay fp32, matmuls run in bf16) or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
