"""Load (slow, about 5 minutes here): 10,000 samples in 10 shards through the job with the tiny models. Every
sample is one row, and peak memory stays within 1.2x of a 2,000-sample run. Figures: RELIABILITY.md."""
from __future__ import annotations

import pytest

from benchmarks.load_bench import measure, report

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ten_thousand_samples_in_flat_memory():
    """benchmarks/load_bench.py's default sizes: rows (counted by DuckDB) = samples; peak RSS ratio <= 1.2."""
    try:
        small, large = measure([2_000, 10_000], per_shard=1_000, batch_size=8)
    finally:
        ray.shutdown()
    print("\n" + report([small, large], "pytest -m slow tests/test_reliability_load.py -s"))
    assert (small["rows"], small["ok"], small["shards"]) == (2_000, 2_000, 2)
    assert (large["rows"], large["ok"], large["shards"]) == (10_000, 10_000, 10)
    assert large["peak_gib"] <= 1.2 * small["peak_gib"]
