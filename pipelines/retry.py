"""What happens to work that failed on a model: a pure policy, plain Python, no Ray.

A batch is tried MAX_TRIES times. Then it is split: each decoded sample runs alone (so a sample that kills its
process is found, and its neighbours are scored), and the batch's undecoded rows are written as they are. A sample
that fails MAX_TRIES times alone becomes an error row: `worker_crashed` when its process died, else `model_failed`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipelines.decode import DecodedBatch
from schemas.capfilt import STATUS_ERROR

MAX_TRIES = 2


@dataclass
class Work:
    """A batch (or one sample of it) on its way to a model actor. `batch` is opaque here (an object ref under Ray)."""

    shard: str
    seq: int  # the batch's number in its shard
    batch: object
    pick: int | None = None  # isolated: the index into batch.ok of the one sample to run; None: the whole batch
    row: dict | None = None  # isolated: the sample's metadata row, for its error row
    position: int | None = None  # isolated: the sample's position in the batch
    tries: int = 0
    failure: str = ""  # why its last try failed

    @property
    def isolated(self) -> bool:
        return self.pick is not None


class Next(Enum):
    RETRY = "retry"  # send it again
    SPLIT = "split"  # fetch the batch's outline, then `split`
    GIVE_UP = "give_up"  # write `error_row`


def after_failure(work: Work) -> Next:
    """The next step for work that failed its `work.tries`-th try."""
    if work.tries < MAX_TRIES:
        return Next.RETRY
    return Next.GIVE_UP if work.isolated else Next.SPLIT


def split(work: Work, outline: DecodedBatch) -> tuple[list[Work], list[tuple[int, dict]]]:
    """(one piece per decoded sample, (position, row) of each undecoded sample) of a batch that failed as a whole."""
    pieces = [Work(work.shard, work.seq, work.batch, pick=p, row=outline.rows[i], position=outline.positions[i])
              for p, i in enumerate(outline.ok)]
    decoded = set(outline.ok)
    rows = [(outline.positions[i], row) for i, row in enumerate(outline.rows) if i not in decoded]
    return pieces, rows


def error_row(work: Work, crashed: bool, why: str) -> tuple[int, dict]:
    """(position, row) of an isolated sample that failed on every try."""
    kind = "worker_crashed" if crashed else "model_failed"
    return work.position, {**work.row, "status": STATUS_ERROR, "error_type": kind,
                           "error_message": f"failed {MAX_TRIES} times on its own: {why}"[:2000]}


def retry_count(work: Work) -> str:
    """The RETRY_COUNTS entry a retry of this work adds to."""
    return "samples_retried" if work.isolated else "batches_retried"


def reason(exc: BaseException) -> str:
    """An exception's last line: Ray wraps a task's error in its remote traceback."""
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


def isolated_event(work: Work, pieces: list[Work], why: str) -> dict:
    """The progress event of a batch split into its samples (pipelines/progress.py)."""
    keys = [piece.row.get("key") for piece in pieces]
    span = f"{keys[0]}..{keys[-1]}" if len(keys) > 1 else f"{keys[0]}" if keys else "none decoded"
    return {"event": "isolated", "shard": work.shard, "batch": work.seq, "span": span, "tries": work.tries,
            "samples": len(pieces), "reason": why}
