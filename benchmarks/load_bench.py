"""Load: the CapFilt job over thousands of samples with the tiny models; time, peak memory and rows per run size.

    .venv/bin/python benchmarks/load_bench.py                                # 2,000 then 10,000 samples (minutes)
    .venv/bin/python benchmarks/load_bench.py --samples 200,1000 --per-shard 100   # a quick look

Memory should not grow with the number of samples: it is bounded by the shards decoded at once and the batches
waiting for the actor. Peak memory is the summed RSS of this process and all its descendants (the embedded Ray:
GCS, raylet, decode workers, model actor), sampled every 0.2 s. Rows are counted by DuckDB over the output glob.
Prints a Markdown table (and writes it with --markdown FILE).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import duckdb
import psutil

try:
    from capfilt_bench import PeakMemory, make_shards  # run as a script: its own folder is on sys.path
except ModuleNotFoundError:
    from benchmarks.capfilt_bench import PeakMemory, make_shards  # imported as benchmarks.load_bench (the load test)
from pipelines.config import CapFiltConfig


def run_size(directory: Path, samples: int, per_shard: int, batch_size: int) -> dict:
    """One job over `samples` samples in shards of `per_shard`: seconds, peak RSS, rows DuckDB counts."""
    from pipelines.ray_runner import run_capfilt

    shards = make_shards(directory / "shards", samples // per_shard, per_shard)
    out = directory / "out"
    config = CapFiltConfig(input=" ".join(map(str, shards)), output=str(out), batch_size=batch_size, model_threads=1)
    with PeakMemory() as memory:
        summary = run_capfilt(config, log=lambda line: None)
    rows = duckdb.execute("SELECT count(*) FROM read_parquet(?)", [str(out / "shards" / "*.parquet")]).fetchall()[0][0]
    return {"samples": samples, "shards": len(shards), "seconds": summary["seconds"], "rows": rows,
            "ok": summary["ok"], "peak_gib": memory.peak / 2**30}


def measure(sizes: list[int], per_shard: int, batch_size: int) -> list[dict]:
    """Each size in its own directory, after a warm-up job that starts Ray and its workers outside the figures."""
    from pipelines.ray_runner import connect

    connect()
    with tempfile.TemporaryDirectory() as tmp:
        run_size(Path(tmp) / "warm", min(per_shard, 50), min(per_shard, 50), batch_size)
        return [run_size(Path(tmp) / str(size), size, per_shard, batch_size) for size in sizes]


def report(results: list[dict], command: str) -> str:
    """The Markdown table of `measure`'s results; memory is compared with the first (smallest) run."""
    reference = results[0]
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB; tiny models; load average {os.getloadavg()[0]:.1f}",
             f"command: {command}", "",
             "| samples | shards | seconds | samples/s | rows (DuckDB) | ok | peak RSS | RSS vs first |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['samples']:,} | {r['shards']} | {r['seconds']:.1f} | {r['samples'] / r['seconds']:.1f} | "
              f"{r['rows']:,} | {r['ok']:,} | {r['peak_gib']:.2f} GiB | {r['peak_gib'] / reference['peak_gib']:.2f}x |"
              for r in results]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default="2000,10000", help="run sizes, comma-separated; the first is the reference")
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)
    results = measure([int(size) for size in args.samples.split(",")], args.per_shard, args.batch_size)
    table = report(results, f"python benchmarks/load_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
