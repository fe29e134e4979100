"""Export the bootstrapped dataset as img2dataset-style webdataset shards, chosen by a DuckDB keep-list.

Image bytes are copied from the source shards unchanged; KEY.txt is the best kept caption (highest ITM),
KEY.json is the original metadata plus every kept caption with its scores. `{shard}_stats.json` is written
after its tar, as img2dataset does, and marks the shard as exported.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from collections import defaultdict

from pipelines.reader import read_shard
from pipelines.select import keep_list, open_run
from pipelines.sources import check_location
from pipelines.writer import RunDir


def export_dataset(run: str, destination: str, threshold: float = 0.5, source: str = "both", log=print) -> dict:
    """Write one tar per source shard that has kept samples; returns counts."""
    check_location(destination)
    con = open_run(run)
    kept = keep_list(con, threshold, source).to_pylist()
    formats = dict(((r[0], r[1]), r[2]) for r in con.execute(
        "SELECT shard, key, image_format FROM samples WHERE status = 'ok'").fetchall())
    by_shard: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in kept:
        by_shard[row["shard"]][row["key"]].append(
            {"text": row["text"], "source": row["source"], "itm": row["itm"], "itc": row["itc"]})
    source_run, out = RunDir(run), RunDir(destination)
    totals = {"shards": 0, "samples": 0, "captions": len(kept), "threshold": threshold, "source": source}
    for shard_id in sorted(by_shard):
        marker = source_run.read_json(source_run.marker_path(shard_id)) or {}
        if "url" not in marker:
            raise ValueError(f"shard {shard_id!r} of {run!r} has no done-marker with its source url")
        started = time.time()
        written = _export_shard(marker["url"], by_shard[shard_id], formats, shard_id, out)
        out.write_json(out.path(f"{shard_id}_stats.json"), {
            "shard": shard_id, "source_url": marker["url"], "count": written, "threshold": threshold,
            "source": source, "seconds": round(time.time() - started, 3)})
        totals["shards"] += 1
        totals["samples"] += written
        log(f"exported {shard_id}: {written} samples")
    out.write_json(out.path("export.json"), {**totals, "run": run})
    return totals


def _export_shard(url: str, captions: dict[str, list[dict]], formats: dict, shard_id: str, out: RunDir) -> int:
    """Stream the kept samples of one source shard into its tar: memory holds one sample, not the shard."""
    written = 0
    with out.open_atomic(out.path(f"{shard_id}.tar")) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        for sample in read_shard(url):
            if not hasattr(sample, "key") or sample.key not in captions or sample.problem is not None:
                continue
            extension = formats.get((shard_id, sample.key))
            if extension not in sample.members:
                continue
            chosen = sorted(captions[sample.key], key=lambda c: -c["itm"])
            meta = _metadata(sample.members.get("json"))
            meta["capfilt"] = {"captions": chosen}
            meta["caption"] = chosen[0]["text"]
            for name, data in ((f"{sample.key}.{extension}", sample.members[extension]),
                               (f"{sample.key}.txt", chosen[0]["text"].encode("utf-8")),
                               (f"{sample.key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
            written += 1
    return written


def _metadata(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        value = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
