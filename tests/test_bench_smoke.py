"""The benchmark harness runs end to end at tiny size and prints every figure it promises."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run(tmp_path):
    """`capfilt_bench.py --size tiny --quick` exits 0 and reports roofline, naive baseline, overhead and memory."""
    table = tmp_path / "bench.md"
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "benchmarks/capfilt_bench.py", "--size", "tiny", "--quick",
                           "--markdown", str(table)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = table.read_text()
    for measure in ("matmul peak fp32 / bf16", "FLOPs per image", "naive baseline", "job on Ray",
                    "bf16 roofline", "same work in one process", "job, N=5", "peak RSS"):
        assert measure in text
    assert text.count("images/s") >= 8


def test_benchmark_overhead_mode(tmp_path):
    """`--overhead` measures only the job on Ray against the same shards in one process, in turn (`--pairs`), and
    reports the ratio and where the cores went during each job."""
    table = tmp_path / "overhead.md"
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "benchmarks/capfilt_bench.py", "--size", "tiny", "--overhead",
                           "--per-shard", "6", "--shard-counts", "2", "--pairs", "2", "--markdown", str(table)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = table.read_text()
    for pair in (1, 2):
        assert f"pair {pair}: same work in one process, 2 shard(s) x 6" in text
        assert f"pair {pair}: job on Ray, N=1, 2 shard(s) x 6" in text and "Ray overhead" in text
        cpu = next(line for line in text.splitlines() if f"pair {pair}: CPU seconds during the job" in line)
        assert "model actor" in cpu and "driver" in cpu and "of the cores' time" in cpu, cpu
    assert "bf16 roofline" in text and "of the roofline" in text
    assert "naive" not in text  # the other measures are skipped


def test_matmul_peak_kernels_compute_the_product():
    """Every kernel the roofline's peak is measured with computes a @ b (so its FLOPs are those counted), and the
    peak has a positive rate per kernel."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("capfilt_bench", ROOT / "benchmarks/capfilt_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(64, 48, dtype=dtype), torch.randn(48, 80, dtype=dtype)
        kernels = bench.matmul_kernels(a, b)
        if dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
            assert set(kernels) == {"torch.mm", "packed"}
        for name, run in kernels.items():
            torch.testing.assert_close(run().float(), a.float() @ b.float(), rtol=2e-2, atol=2e-1, msg=name)
        peaks = bench.matmul_peak(dtype, n=128, seconds=0.05)
        assert set(peaks) == set(kernels) and all(rate > 0 for rate in peaks.values())


@pytest.mark.parametrize("compare,variants", [("attention", {"fused", "math"}),
                                              ("optimizer", {"per-tensor", "fused"})])
def test_train_step_benchmark(tmp_path, compare, variants):
    """`train_step.py WORLD 2 1 --compare X` trains once with each variant and prints the ratio."""
    from shapeworld.build import ensure_world

    world = ensure_world(tmp_path / "world", seed=3, size="small")
    done = subprocess.run([sys.executable, "benchmarks/train_step.py", str(world), "2", "1", "--compare", compare],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["steps"] == 2 and set(figures["seconds"]) == variants
    assert all(len(runs) == 1 and runs[0] > 0 for runs in figures["seconds"].values())
    assert figures["ratio"] > 0
