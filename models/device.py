"""Device and precision choice: one place decides where a model runs and in which number format."""
from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

from models.names import PRECISIONS, DeviceError, check_device  # torch-free: a command line checks them first

__all__ = ["PRECISIONS", "DeviceError", "autocast", "cpu_bf16_kernels", "cpu_description", "cpu_has_fast_bf16",
           "resolve_device", "resolve_precision"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, torch.device):
        check_device(device)
    resolved = device if isinstance(device, torch.device) else torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but this host has no CUDA device: use auto or cpu")
    return resolved


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX). Elsewhere bf16 autocast is emulated and slower than fp32."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


@functools.cache
def cpu_bf16_kernels() -> bool:
    """oneDNN's bf16 kernels (packed linear weights): AVX512 BW/VL/DQ or AVX-NE-CONVERT, as oneDNN itself checks;
    AVX2-only CPUs have none and oneDNN raises on them."""
    if not torch.backends.mkldnn.is_available():
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported()) if supported is not None else torch.backends.cpu.get_cpu_capability() == "AVX512"


def cpu_description() -> str:
    """torch's CPU capability and the bf16 support that decides the CPU paths, for logs and benchmarks."""
    return (f"{torch.backends.cpu.get_cpu_capability()}, native bf16 {'yes' if cpu_has_fast_bf16() else 'no'}, "
            f"oneDNN bf16 {'yes' if cpu_bf16_kernels() else 'no'}")


def set_threads(threads: int | None, device: str) -> None:
    """Torch threads of a model process: `threads`, else every core of this node off CUDA (Ray sets a CPU actor's
    torch threads to its CPU share, which would leave the cores of a 2-CPU node half idle)."""
    if threads or not str(device).startswith("cuda"):
        torch.set_num_threads(threads or os.cpu_count())


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on CUDA and on CPUs with native bf16, fp32 otherwise."""
    check_device("auto", precision)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        _warn_emulated_bf16()
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


@functools.cache
def _warn_emulated_bf16() -> None:
    warnings.warn(f"precision bf16 on a CPU without native bf16 ({cpu_description()}): bf16 is emulated there and "
                  "slower than fp32; --precision auto picks fp32 on this CPU", RuntimeWarning, stacklevel=3)
