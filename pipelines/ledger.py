"""The shard ledger: what the driver knows of each open shard and of the run. Plain Python, no Ray.

A shard is ready to commit when its decode stream has ended and no work for it is outstanding; its rows are then
in (batch, position) order, the order the shard's samples were read in, however the work was split or retried.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipelines.sources import Shard
from schemas.capfilt import no_retries


@dataclass
class ShardEntry:
    shard: Shard
    started: float = field(default_factory=time.time)
    batches: int = 0  # batch numbers handed out
    reading: bool = True  # its decode stream may still deliver batches
    outstanding: int = 0  # batches (or pieces, or rows) still to come back
    rows: dict = field(default_factory=dict)  # (batch, position) -> row
    skip: int = 0  # samples the current decode task passes over: delivered by (or lost with) tasks that died
    single: int = 0  # samples after those that it delivers one per batch
    task_batches: int = 0  # batches read from the current decode task
    retries: dict = field(default_factory=no_retries)  # work redone after failures (schemas.capfilt.RETRY_COUNTS)

    def new_batch(self, from_task: bool = True) -> int:
        """A batch number for work that will come back (`from_task`: a batch the decode task delivered)."""
        seq = self.batches
        self.batches += 1
        self.outstanding += 1
        self.task_batches += from_task
        return seq

    def put(self, seq: int, rows: list[tuple[int, dict]], done: bool = True) -> None:
        """Rows of batch `seq` by position; `done`: that is one outstanding piece of work back."""
        for position, row in rows:
            self.rows[(seq, position)] = row
        self.outstanding -= done

    def restart_decoding(self, skip: int, single: int) -> None:
        self.skip, self.single, self.task_batches = skip, single, 0

    def delivered(self, batch_size: int) -> int:
        """The number of the shard's first sample that the current decode task has not delivered."""
        singles = min(self.task_batches, self.single)
        return self.skip + singles + (self.task_batches - singles) * batch_size

    @property
    def ready(self) -> bool:
        return not self.reading and not self.outstanding

    def ordered_rows(self) -> list[dict]:
        return [self.rows[key] for key in sorted(self.rows)]


class Ledger:
    """Open shards by id, and the run's totals over committed shards."""

    def __init__(self, total: int, already: int):
        self.open: dict[str, ShardEntry] = {}
        self.total, self.committed = total, already
        self.samples = self.ok = self.errors = 0
        self.retries = no_retries()  # over the run, open shards included (they are what is slow now)
        self.started = time.time()

    def start(self, shard: Shard) -> ShardEntry:
        self.open[shard.id] = entry = ShardEntry(shard)
        return entry

    def count(self, entry: ShardEntry, what: str, n: int = 1) -> None:
        entry.retries[what] += n
        self.retries[what] += n

    def committed_shard(self, entry: ShardEntry, stats: dict) -> dict:
        """Close a committed shard; returns its `shard` event."""
        del self.open[entry.shard.id]
        self.committed += 1
        self.samples += stats["samples"]
        self.ok += stats["ok"]
        self.errors += sum(stats["errors"].values())
        return {"event": "shard", "shard": entry.shard.id, "samples": stats["samples"], "ok": stats["ok"],
                "retries": stats["retries"], **self._run()}

    def progress(self) -> dict:
        """A `progress` event: what is scored so far, committed or not."""
        pending = sum(len(entry.rows) for entry in self.open.values())
        return {"event": "progress", "open": len(self.open), "scored": self.samples + pending,
                "rate": (self.samples + pending) / max(time.time() - self.started, 1e-9), **self._run()}

    def summary(self, output: str) -> dict:
        elapsed = time.time() - self.started
        return {"shards": self.total, "committed": self.committed, "samples": self.samples, "ok": self.ok,
                "errors": self.errors, "retries": dict(self.retries), "seconds": round(elapsed, 2),
                "samples_per_second": round(self.samples / elapsed, 2) if elapsed else None, "output": output}

    def _run(self) -> dict:
        return {"committed": self.committed, "total": self.total, "run_samples": self.samples,
                "run_rate": self.samples / max(time.time() - self.started, 1e-9), "errors": self.errors,
                "run_retries": dict(self.retries)}
