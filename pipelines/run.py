"""A CapFilt run around its models, the same for both runners: the checks made before anything starts, the run
record and resume, and the commit of a finished shard (Parquet, then the done-marker)."""
from __future__ import annotations

from pipelines.assemble import shard_stats, shard_table
from pipelines.config import CapFiltConfig, check_compatible, run_record
from pipelines.fingerprint import check_inputs_unchanged
from pipelines.ledger import ShardEntry
from pipelines.sources import Shard
from pipelines.writer import RunDir
from schemas.capfilt import RUN_FILE

DEFAULT_GPU_BATCH, DEFAULT_CPU_BATCH = 64, 8  # images per model call (BENCHMARKS.md: batch sizes on CPUs)


def prepare(config: CapFiltConfig, shards: list[Shard] | None = None) -> tuple[list[Shard], RunDir]:
    """Everything that can be checked before a model loads (CapFiltConfig.check); the input shards and the output.
    `shards`: what an earlier `config.check()` returned (the job checks before importing torch or Ray), so the
    inputs are not listed twice."""
    return (config.check() if shards is None else shards), RunDir(config.output)


def open_run(config: CapFiltConfig, shards: list[Shard], out: RunDir, info: dict) -> list[Shard]:
    """Write run.json (or check that the existing run is this one); returns the shards still to do."""
    record = run_record(config, [s.url for s in shards], info)
    existing = out.read_json(out.path(RUN_FILE))
    if existing is not None and not config.overwrite:
        check_compatible(existing, record)  # the same run: resume it, keeping its record
    else:
        out.clear()
        out.write_json(out.path(RUN_FILE), record)
    done = out.done_shards()
    # a finished shard whose tar changed since the run read it would make the run a mix of two inputs
    check_inputs_unchanged(out.recorded_inputs(), [s.url for s in shards if s.id in done])
    return [s for s in shards if s.id not in done]


def start_event(config: CapFiltConfig, shards: list[Shard], todo: list[Shard], info: dict, actors: int) -> dict:
    return {"event": "start", "shards": len(shards), "already": len(shards) - len(todo), "actors": actors,
            "device": info["device"], "precision": info["precision"], "captioner": config.captioner,
            "filter": config.filter, "scorer": config.scorer, "shared_vision": info.get("shared_vision", False)}


def commit(out: RunDir, entry: ShardEntry, embedding_dim: int) -> dict:
    """The shard's Parquet then its done-marker; returns the marker's content."""
    rows = entry.ordered_rows()
    stats = shard_stats(entry.shard.id, entry.shard.url, rows, entry.started, entry.retries)
    out.commit_shard(entry.shard.id, shard_table(rows, embedding_dim), stats)
    return stats
