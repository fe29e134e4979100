"""CapFilt in one process, without Ray: the same reader, stage, retry policy, ledger and writer as the Ray runner,
so it writes the same Parquet bytes. For notebooks, benchmarks and tests that need no cluster.

A sample that kills the process cannot be survived here (the Ray runner isolates it); a model exception is retried
and isolated as on Ray.
"""
from __future__ import annotations

from dataclasses import replace

from pipelines import retry
from pipelines.batches import shard_batches
from pipelines.config import CapFiltConfig
from pipelines.decode import DecodedBatch
from pipelines.ledger import Ledger, ShardEntry
from pipelines.progress import reporter
from pipelines.run import DEFAULT_CPU_BATCH, DEFAULT_GPU_BATCH, commit, open_run, prepare, start_event
from pipelines.stage import CapFiltStage


def run_local(config: CapFiltConfig, log=print, on_event=None, stage: CapFiltStage | None = None) -> dict:
    """Run CapFilt over config.input into config.output in this process; returns the summary.

    `stage`: an already loaded CapFiltStage to use (a benchmark builds it with its own kernel choices); by default
    one is loaded from the config. `on_event` receives the progress events (pipelines/progress.py), `log` their
    lines."""
    shards, out = prepare(config)
    emit = reporter(log, on_event)
    stage = stage or CapFiltStage(config.captioner, config.filter, config.sampling, config.device, config.precision,
                                  config.model_threads, scorer=config.scorer)
    info = stage.info()
    if config.batch_size is None:
        config = replace(config, batch_size=DEFAULT_GPU_BATCH if info["device"].startswith("cuda")
                         else DEFAULT_CPU_BATCH)
    todo = open_run(config, shards, out, info)
    emit(start_event(config, shards, todo, info, actors=1))
    ledger = Ledger(total=len(shards), already=len(shards) - len(todo))
    options = {"max_pixels": config.max_pixels} if config.max_pixels else {}
    for shard in todo:
        entry = ledger.start(shard)
        for batch in shard_batches(shard.id, shard.url, info["image_sizes"], config.batch_size, **options):
            seq = entry.new_batch()
            entry.put(seq, _scored(stage, batch, retry.Work(shard.id, seq, batch), entry, ledger, emit))
            if emit.due():  # only for a console that updates its line in place: no periodic lines here otherwise
                emit(ledger.progress())
        entry.reading = False
        emit(ledger.committed_shard(entry, commit(out, entry, info["embedding_dim"])))
    summary = ledger.summary(config.output)
    emit({"event": "summary", "summary": summary})
    return summary


def _scored(stage: CapFiltStage, batch: DecodedBatch, work: retry.Work, entry: ShardEntry, ledger: Ledger,
            emit) -> list[tuple[int, dict]]:
    """(position, row) of every row of the batch, the retry policy applied to model exceptions."""
    while True:
        work.tries += 1
        piece = batch if work.pick is None else batch.take([work.pick])
        try:
            return list(zip(piece.positions, stage(piece)))
        except Exception as exc:  # noqa: BLE001 - a model failure on one batch becomes rows, as on Ray
            reason = retry.reason(exc)
            step = retry.after_failure(work)
            if step is retry.Next.RETRY:
                ledger.count(entry, retry.retry_count(work))
                continue
            if step is retry.Next.GIVE_UP:
                return [retry.error_row(work, crashed=False, why=reason)]
            pieces, rows = retry.split(work, batch.outline())
            ledger.count(entry, "batches_isolated")
            ledger.count(entry, "samples_isolated", len(pieces))
            emit(retry.isolated_event(work, pieces, reason))
            for one in pieces:
                rows += _scored(stage, batch, one, entry, ledger, emit)
            return rows
