"""The curator's report on a large run: seconds and peak memory of `curate.py report` (BENCHMARKS.md).

The run is written without models: per-shard Parquet in the output schema (random scores, BLIP's 256-float
embeddings, 3 synthetic captions per image, 1% error rows) committed with done-markers, over source tars of tiny
PNGs (image members only), so the report reads real tars for its thumbnails. The report runs in its own process
(the command a curator types), and its peak RSS is that process's.

    python benchmarks/report_bench.py --rows 1000000 --shard-size 10000 --dir /tmp/report-bench
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.writer import RunDir  # noqa: E402
from schemas.capfilt import RUN_FILE, sample_schema  # noqa: E402

EMBEDDING = 256
SYNTHETIC = 3


def tiny_png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_source(path: Path, keys: list[str], images: list[bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, data in zip(keys, images):
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def shard_table(shard_id: str, keys: list[str], rng: np.random.Generator) -> pa.Table:
    n = len(keys)
    error = rng.random(n) < 0.01
    ok = ~error
    web_itm = np.where(ok, rng.beta(0.6, 0.6, n), np.nan).astype(np.float32)
    syn_itm = rng.beta(2.0, 0.7, (n, SYNTHETIC)).astype(np.float32)
    syn_itc = rng.normal(0.35, 0.1, (n, SYNTHETIC)).astype(np.float32)
    texts = [f"a synthetic caption {j} of {k}" for k in keys for j in range(SYNTHETIC)]
    struct = pa.StructArray.from_arrays(
        [pa.array(texts), pa.array(syn_itm.reshape(-1)), pa.array(syn_itc.reshape(-1)),
         pa.nulls(n * SYNTHETIC, pa.float32())], names=["text", "itm", "itc", "clip"])
    synthetic = pa.ListArray.from_arrays(pa.array(np.arange(0, n * SYNTHETIC + 1, SYNTHETIC, dtype=np.int32)), struct,
                                         mask=pa.array(error))
    embeddings = rng.normal(size=(n, EMBEDDING)).astype(np.float32)
    schema = sample_schema(EMBEDDING)
    null_ok = pa.array(np.where(ok, None, None), pa.string())
    columns = {
        "shard": pa.array([shard_id] * n), "key": pa.array(keys),
        "status": pa.array(np.where(ok, "ok", "error")), "error_type": pa.array([None if o else "decode_error" for o in ok]),
        "error_message": pa.array([None if o else "cannot identify image file" for o in ok]),
        "url": pa.array([f"https://example.com/{shard_id}/{k}.jpg" for k in keys]),
        "web_caption": pa.array([f"web alt-text of {k}" for k in keys]), "web_caption_invalid_utf8": pa.array([False] * n),
        "web_itm": pa.array(web_itm, mask=error), "web_itc": pa.array(rng.normal(0.3, 0.1, n).astype(np.float32), mask=error),
        "web_clip": pa.nulls(n, pa.float32()), "synthetic": synthetic,
        "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), EMBEDDING, mask=pa.array(error)),
        "width": pa.array([8] * n, pa.int32()), "height": pa.array([8] * n, pa.int32()),
        "image_format": pa.array(["png"] * n), "original_width": pa.array([640] * n, pa.int32()),
        "original_height": pa.array([480] * n, pa.int32()), "sha256": null_ok, "metadata": null_ok,
    }
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def write_run(root: Path, rows: int, shard_size: int) -> Path:
    run = root / "run"
    if (run / RUN_FILE).exists():
        print(f"reusing {run}")
        return run
    out = RunDir(str(run))
    rng = np.random.default_rng(0)
    images = [tiny_png(i) for i in range(256)]
    started = time.time()
    shards = (rows + shard_size - 1) // shard_size
    for s in range(shards):
        shard_id = f"{s:05d}"
        keys = [f"{shard_id}{i:04d}" for i in range(min(shard_size, rows - s * shard_size))]
        tar = root / "inputs" / f"{shard_id}.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        write_source(tar, keys, [images[i % len(images)] for i in range(len(keys))])
        table = shard_table(shard_id, keys, rng)
        ok = len(keys) - table["status"].to_pylist().count("error")
        out.commit_shard(shard_id, table, {"shard": shard_id, "url": str(tar), "samples": len(keys), "ok": ok,
                                           "errors": {"decode_error": len(keys) - ok}, "partial": False})
        if s % 10 == 0:
            print(f"  wrote {s + 1}/{shards} shards ({time.time() - started:.0f} s)", flush=True)
    out.write_json(out.path(RUN_FILE), {"input": str(root / "inputs"), "shards": shards,
                                        "sampling": {"seed": 0, "num_captions": SYNTHETIC}, "models": {}})
    print(f"wrote {rows} rows in {shards} shards in {time.time() - started:.0f} s")
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--dir", default="/tmp/report-bench")
    args = p.parse_args()
    root = Path(args.dir)
    run = write_run(root, args.rows, args.shard_size)
    report = root / "report.html"
    started = time.time()
    subprocess.run([sys.executable, "jobs/curate.py", "report", str(run), "--to", str(report)], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    seconds = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    parquet = sum(f.stat().st_size for f in (run / "shards").glob("*.parquet")) / 2**20
    print(f"report of {args.rows} rows ({parquet:.0f} MiB of Parquet, {os.cpu_count()} CPUs): {seconds:.1f} s "
          f"(the whole command, Python start-up and imports included), peak RSS {peak:.0f} MiB, "
          f"{report.stat().st_size / 2**20:.1f} MiB of HTML")


if __name__ == "__main__":
    main()
