"""A shard as a stream of decoded batches: the unit a CPU worker hands to the model stage."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from models.images import DEFAULT_MAX_PIXELS
from pipelines.decode import DecodedBatch, decode_samples, error_row, undecoded_row
from pipelines.reader import ShardProblem, read_shard


def shard_batches(shard_id: str, url: str, sizes: Sequence[int], batch_size: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS, skip: int = 0, single: int = 0) -> Iterator[DecodedBatch]:
    """Decoded batches of `batch_size` samples; a shard problem ends the stream as one error row (key null).

    After a decode process died: the first `skip` samples are passed over (read, not decoded), and the next `single`
    come one per batch, so that a sample that kills its process is the one after the last sample delivered.
    """
    pending = []
    for index, item in enumerate(read_shard(url)):
        if isinstance(item, ShardProblem):
            if pending:
                yield decode_samples(shard_id, pending, sizes, max_pixels)
                pending = []
            yield problem_batch(shard_id, sizes, item.error_type, item.message)
            return
        if index < skip:
            continue
        pending.append(item)
        if len(pending) == (1 if index < skip + single else batch_size):
            yield decode_samples(shard_id, pending, sizes, max_pixels)
            pending = []
    if pending:
        yield decode_samples(shard_id, pending, sizes, max_pixels)


def problem_batch(shard_id: str, sizes: Sequence[int], error_type: str, message: str) -> DecodedBatch:
    batch = decode_samples(shard_id, [], sizes)
    return DecodedBatch([error_row(shard_id, None, error_type, message)], [], batch.images, [])


def sample_error_row(shard_id: str, url: str, index: int, error_type: str, message: str) -> dict:
    """The error row of the shard's sample number `index` (counted from 0), read again without decoding its image;
    a shard-level row (key null) if the shard no longer has that sample."""
    for position, item in enumerate(read_shard(url)):
        if isinstance(item, ShardProblem):
            break
        if position == index:
            return undecoded_row(shard_id, item, error_type, message)
    return error_row(shard_id, None, error_type, f"sample {index} of the shard: {message}")
