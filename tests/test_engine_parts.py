"""The engine's plain-Python parts, without Ray: the retry policy, the shard ledger, the progress lines, the decoded
batch's slicing."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines import retry
from pipelines.actor_pool import check_gpus
from pipelines.decode import DecodedBatch, error_row, new_row
from pipelines.ledger import Ledger
from pipelines.progress import line
from pipelines.sources import Shard


def batch_of(keys: list[str], undecoded: set[str] = frozenset()) -> DecodedBatch:
    """A batch whose samples `undecoded` failed before the models (the others have 4x4 pixels)."""
    rows = [error_row("s", k, "not_an_image", "junk") if k in undecoded else new_row("s", k) for k in keys]
    ok = [i for i, k in enumerate(keys) if k not in undecoded]
    pixels = np.arange(len(ok) * 48, dtype=np.uint8).reshape(len(ok), 4, 4, 3)
    return DecodedBatch(rows, ok, {4: pixels}, [f"caption {keys[i]}" for i in ok])


def test_a_batch_slices_to_its_samples_and_remembers_their_positions():
    batch = batch_of(["a", "b", "c", "d"], undecoded={"b"})
    piece = batch.take([2])  # the third decoded sample: "d", at position 3
    assert [r["key"] for r in piece.rows] == ["d"] and piece.ok == [0] and piece.positions == [3]
    assert piece.captions == ["caption d"] and np.array_equal(piece.images[4][0], batch.images[4][2])
    outline = batch.outline()
    assert outline.rows == batch.rows and outline.ok == [0, 2, 3] and outline.images[4].shape == (0, 4, 4, 3)


def test_policy_retries_then_splits_then_gives_up():
    work = retry.Work("s", 0, batch=object(), tries=1)
    assert retry.after_failure(work) is retry.Next.RETRY and retry.retry_count(work) == "batches_retried"
    work.tries = retry.MAX_TRIES
    assert retry.after_failure(work) is retry.Next.SPLIT
    pieces, rows = retry.split(work, batch_of(["a", "b", "c"], undecoded={"b"}).outline())
    assert [(p.pick, p.position, p.row["key"], p.tries) for p in pieces] == [(0, 0, "a", 0), (1, 2, "c", 0)]
    assert [(position, row["error_type"]) for position, row in rows] == [(1, "not_an_image")]
    lone = pieces[1]
    lone.tries = 1
    assert retry.after_failure(lone) is retry.Next.RETRY and retry.retry_count(lone) == "samples_retried"
    lone.tries = retry.MAX_TRIES
    assert retry.after_failure(lone) is retry.Next.GIVE_UP
    position, row = retry.error_row(lone, crashed=True, why="boom")
    assert position == 2 and row["key"] == "c" and row["error_type"] == "worker_crashed"
    assert row["error_message"] == f"failed {retry.MAX_TRIES} times on its own: boom"
    assert retry.error_row(lone, crashed=False, why="x")[1]["error_type"] == "model_failed"


def test_a_batch_with_no_decoded_sample_splits_into_its_rows_only():
    pieces, rows = retry.split(retry.Work("s", 3, None, tries=2), batch_of(["a", "b"], undecoded={"a", "b"}).outline())
    assert pieces == [] and [p for p, _ in rows] == [0, 1]


def test_ledger_commits_a_shard_when_read_and_every_piece_is_back_in_read_order():
    ledger = Ledger(total=2, already=0)
    entry = ledger.start(Shard("00000", "/x/00000.tar"))
    first, second = entry.new_batch(), entry.new_batch()
    entry.put(second, [(0, {"key": "c", "status": "ok"})])
    assert not entry.ready  # still reading, and batch 0 is out
    entry.reading = False
    entry.outstanding += 1  # batch 0 split in two pieces
    entry.put(first, [(1, {"key": "b", "status": "ok"})])
    assert not entry.ready
    entry.put(first, [(0, {"key": "a", "status": "error", "error_type": "model_failed"})])
    assert entry.ready and [r["key"] for r in entry.ordered_rows()] == ["a", "b", "c"]
    ledger.count(entry, "batches_isolated")
    event = ledger.committed_shard(entry, {"samples": 3, "ok": 2, "errors": {"model_failed": 1},
                                           "retries": dict(entry.retries)})
    assert (event["committed"], event["run_samples"], event["errors"]) == (1, 3, 1) and not ledger.open
    assert line(event).startswith("[1/2 shards] 00000: 3 samples, 2 ok, 1 isolated (0 samples alone) | run: 3 ")
    summary = ledger.summary("out")
    assert (summary["committed"], summary["ok"], summary["retries"]["batches_isolated"]) == (1, 2, 1)


def test_ledger_knows_where_a_restarted_decode_task_starts():
    entry = Ledger(1, 0).start(Shard("s", "s.tar"))
    entry.new_batch(), entry.new_batch()  # two batches of 8 from the first task
    assert entry.delivered(8) == 16
    entry.restart_decoding(skip=16, single=8)  # it died: the next 8 come one per batch
    entry.new_batch(), entry.new_batch(), entry.new_batch()
    assert entry.delivered(8) == 19
    entry.new_batch(from_task=False)  # a crashed sample's row: not delivered by the task
    assert entry.delivered(8) == 19


def test_more_actors_than_gpus_is_refused_in_one_line():
    assert check_gpus(None, 4, needs_gpu=True) == 4 and check_gpus(None, 0, needs_gpu=False) == 1
    assert check_gpus(3, 0, needs_gpu=False) == 3  # CPU actors share the CPUs
    with pytest.raises(ValueError, match=r"--actors 3: the cluster has 2 GPU\(s\)"):
        check_gpus(3, 2, needs_gpu=True)
