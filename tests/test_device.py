"""models.device: where a model runs and in which number format."""
from __future__ import annotations

import pytest
import torch

from models.device import DeviceError, autocast, cpu_has_fast_bf16, resolve_device, resolve_precision

CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")


def test_auto_and_cpu_resolve_to_cpu_without_cuda():
    """'cpu' is the CPU and 'auto' falls back to it when there is no CUDA device."""
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_raises_device_error(device):
    """Asking for CUDA on a host without it is a DeviceError that says so, not a late torch failure."""
    with pytest.raises(DeviceError, match="no CUDA"):
        resolve_device(device)


def test_unknown_device_raises_device_error():
    """A device string torch does not know is a DeviceError listing the valid choices."""
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("quantum")


@no_cuda
def test_cuda_torch_device_without_cuda_raises_device_error():
    """A torch.device('cuda') object gets the same availability check as the string 'cuda'."""
    with pytest.raises(DeviceError):
        resolve_device(torch.device("cuda"))


def test_auto_precision_on_cpu_is_bf16_iff_native_bf16():
    """'auto' on the CPU is bf16 exactly when the CPU has native bf16 dot products, else fp32."""
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_has_fast_bf16() else "fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_explicit_precision_is_kept(precision):
    """An explicit precision is used as given."""
    assert resolve_precision(precision, CPU) == precision


@pytest.mark.parametrize("precision", ["fp16", "float32", "", "BF16"])
def test_unknown_precision_raises(precision):
    """Anything but auto / bf16 / fp32 is refused with a DeviceError."""
    with pytest.raises(DeviceError, match="unknown precision"):
        resolve_precision(precision, CPU)


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    """bf16 autocast turns a matmul's output into bf16; fp32 leaves it fp32."""
    a = torch.ones(4, 4)
    with autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ a).dtype == torch.float32
