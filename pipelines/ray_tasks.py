"""What Ray runs in worker processes besides the model actors: the setup hook of every worker and the decode tasks.

Kept apart from `ray_runner.py` so that a decode worker imports ray and the decode path only, never torch or
transformers: Ray imports a task's module in the worker that runs it, and runs the setup hook in every worker.
"""
from __future__ import annotations

import ray

from pipelines.batches import problem_batch, sample_error_row, shard_batches


def quiet_worker_logs() -> None:
    """Run in every worker process of a local instance: Ray Train's placement-group cleaner polls the state API,
    which needs the dashboard that a local instance does not start (it costs a 2-core machine seconds per start),
    and would warn every second until the driver exits."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


@ray.remote(num_cpus=1, _generator_backpressure_num_objects=2)
def decode_shard(shard_id: str, url: str, sizes: list[int], batch_size: int, max_pixels: int | None,
                 skip: int = 0, single: int = 0):
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    try:
        yield from shard_batches(shard_id, url, sizes, batch_size, skip=skip, single=single, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a bug on hostile data ends the shard as an error row, not the job
        yield problem_batch(shard_id, sizes, "decode_failed", f"{type(exc).__name__}: {exc}")


@ray.remote(num_cpus=0)
def crashed_sample(shard_id: str, url: str, index: int, message: str) -> dict:
    """The `worker_crashed` row of the sample whose decoding killed its process, its image left undecoded."""
    return sample_error_row(shard_id, url, index, "worker_crashed", message)


@ray.remote(num_cpus=0)
def batch_outline(batch):
    """The batch without its pixels (DecodedBatch.outline): what the driver needs to report each sample alone."""
    return batch.outline()
