"""A shard as a stream of decoded batches: the unit a CPU worker hands to the model stage."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from models.images import DEFAULT_MAX_PIXELS
from pipelines.decode import decode_samples, error_row
from pipelines.reader import ShardProblem, read_shard


def shard_batches(shard_id: str, url: str, sizes: Sequence[int], batch_size: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[dict]:
    """Decoded batches of `batch_size` samples; a shard problem ends the stream as one error row (key null)."""
    pending = []
    for item in read_shard(url):
        if isinstance(item, ShardProblem):
            if pending:
                yield decode_samples(shard_id, pending, sizes, max_pixels)
                pending = []
            yield problem_batch(shard_id, sizes, item.error_type, item.message)
            return
        pending.append(item)
        if len(pending) == batch_size:
            yield decode_samples(shard_id, pending, sizes, max_pixels)
            pending = []
    if pending:
        yield decode_samples(shard_id, pending, sizes, max_pixels)


def problem_batch(shard_id: str, sizes: Sequence[int], error_type: str, message: str) -> dict:
    batch = decode_samples(shard_id, [], sizes)
    batch["rows"] = [error_row(shard_id, None, error_type, message)]
    return batch
