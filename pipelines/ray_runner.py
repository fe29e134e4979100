"""The Ray wiring of CapFilt: decode tasks stream batches to model actors; the driver commits each shard.

With `ray_tasks.py` (what runs in decode workers) and `actor_pool.py`, the only pipeline modules that import ray.
Flow per shard: a streaming decode task (CPU) yields batches -> the least busy model actor (one per GPU, or CPU)
captions and scores them -> when every batch of the shard is back, the driver writes its Parquet and then its
done-marker. The loop only waits on refs and hands what arrives to the ledger (`ledger.py`) and the retry policy
(`retry.py`); memory is bounded by the shards decoded at once and by the batches allowed to wait for an actor.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from dataclasses import replace
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayError

from models.names import DeviceError, ModelLoadError
from pipelines import retry
from pipelines.actor_pool import SLOTS, ActorPool, check_gpus
from pipelines.config import CapFiltConfig
from pipelines.decode import error_row
from pipelines.ledger import Ledger, ShardEntry
from pipelines.progress import reporter
from pipelines.ray_tasks import batch_outline, crashed_sample, decode_shard
from pipelines.run import DEFAULT_CPU_BATCH, DEFAULT_GPU_BATCH, commit, open_run, prepare, start_event
from pipelines.stage import CapFiltStage

REPO_ROOT = str(Path(__file__).resolve().parents[1])
WAITING_BATCHES = 4  # decoded batches allowed to wait for an actor, per actor
PROGRESS_EVERY = 30.0  # seconds between progress lines while shards are still open (1 s on a terminal)
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def connect(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a private local instance bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))},
           "worker_process_setup_hook": "pipelines.ray_tasks.quiet_worker_logs"}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # address="local": never join a stale cluster left by an earlier `ray start`. Ray's default for a new
        # local instance (token auth on, the token kept in ~/.ray/auth_token) is kept; only the warning it logs
        # on every run when RAY_AUTH_MODE is unset is not shown (a mode the user sets is Ray's to report).
        with _quiet_logger(RAY_AUTH_LOGGER):
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=env,
                     configure_logging=False, log_to_driver=True)


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class ModelActor(CapFiltStage):
    """CapFiltStage plus what the driver asks of an actor. A model that cannot be loaded is reported by `info`, not
    raised: Ray would restart a failing actor forever and print its traceback."""

    def __init__(self, captioner, filter, sampling, device, precision, threads=None, scorer=None):
        self.load_error = None
        try:
            super().__init__(captioner, filter, sampling, device, precision, threads, scorer=scorer)
        except (ModelLoadError, DeviceError) as exc:
            self.load_error = str(exc)

    def info(self) -> dict:
        return {"error": self.load_error} if self.load_error is not None else super().info()

    def process(self, batch, pick: int | None = None) -> list[tuple[int, dict]]:
        """(position, row) of each row of the batch, or of its decoded sample `pick` alone."""
        piece = batch if pick is None else batch.take([pick])
        return list(zip(piece.positions, self(piece)))


def plan_resources(cpus: float, gpus: int, n_actors: int) -> dict:
    """CPU shares: model actors never take the last CPU, so decode tasks can always be scheduled."""
    if gpus:
        actor_cpus = min(1.0, max(cpus - 1, 0) / n_actors)
    else:
        actor_cpus = min(1.0, max(cpus - 1, cpus / 2) / n_actors)
    free = cpus - actor_cpus * n_actors
    decode_cpus = min(1.0, free)
    return {"actor_cpus": round(actor_cpus, 3), "decode_cpus": round(decode_cpus, 3),
            "decode_workers": max(1, int(free // decode_cpus))}


def run_capfilt(config: CapFiltConfig, log=print, actor_class: type = None, on_event=None,
                shards: list | None = None) -> dict:
    """Run CapFilt over config.input into config.output on Ray; returns the summary it prints at the end.

    `on_event` receives the progress events (pipelines/progress.py), `log` their lines. `actor_class` (a ModelActor
    subclass) lets the reliability tests inject crashes; the job never sets it. `shards`: the input shards, when
    `config.check()` has already listed them.
    """
    shards, out = prepare(config, shards)
    connect()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    device = "cuda" if gpus and config.device == "auto" else config.device
    n_actors = check_gpus(config.actors, gpus, needs_gpu=device.startswith("cuda"))
    if config.batch_size is None:
        config = replace(config, batch_size=DEFAULT_GPU_BATCH if gpus else DEFAULT_CPU_BATCH)
    plan = plan_resources(cpus, gpus, n_actors)
    options = dict(max_restarts=-1, max_task_retries=0, max_concurrency=1, num_cpus=plan["actor_cpus"],
                   num_gpus=1 if device.startswith("cuda") else 0)
    pool = ActorPool(actor_class or ModelActor, (config.captioner, config.filter, config.sampling, device,
                                                 config.precision, config.model_threads, config.scorer), n_actors,
                       options)
    try:
        info = pool.check_loaded()[0]
        todo = open_run(config, shards, out, info)
        emit = reporter(log, on_event)
        emit(start_event(config, shards, todo, info, n_actors))
        loop = _Loop(pool, info, config, out, Ledger(len(shards), len(shards) - len(todo)), emit, plan["decode_cpus"])
        summary = loop.run(deque(todo), max_open=(config.decode_workers or plan["decode_workers"]) + 1)
        emit({"event": "summary", "summary": summary})
        return summary
    finally:
        pool.kill()


class _Loop:
    """Waits on refs; each that arrives goes to its handler, which updates the ledger and starts what follows."""

    def __init__(self, pool: ActorPool, info: dict, config: CapFiltConfig, out, ledger: Ledger, emit,
                 decode_cpus: float):
        self.pool, self.info, self.config, self.out, self.ledger, self.emit = pool, info, config, out, ledger, emit
        self.decode_cpus = decode_cpus
        self.waiting: deque[retry.Work] = deque()
        self.streams: dict = {}  # decode task's generator -> its shard's entry
        self.outlines: dict = {}  # batch_outline ref -> the work that failed as a whole
        self.crashed_rows: dict = {}  # crashed_sample ref -> (entry, batch number)

    def run(self, todo: deque, max_open: int) -> dict:
        while todo or self.ledger.open:
            while todo and len(self.ledger.open) < max_open:
                self._decode(self.ledger.start(todo.popleft()))
            self._dispatch()
            reading = list(self.streams) if len(self.waiting) < WAITING_BATCHES * len(self.pool.actors) else []
            ready, _ = ray.wait(reading + self.pool.refs() + list(self.outlines) + list(self.crashed_rows),
                                num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.streams:
                    self._read(ref)
                elif ref in self.outlines:
                    self._split(ref)
                elif ref in self.crashed_rows:
                    self._crashed_row(ref)
                elif ref in self.pool.probes:
                    back = self.pool.probed(ref)
                    if back is not None:
                        self.emit({"event": "actor_back", "actor": back})
                else:
                    self._finished(ref)
            if self.emit.due(PROGRESS_EVERY):  # or at a live console's pace (progress.Reporter)
                self.emit(self.ledger.progress())
        return self.ledger.summary(self.config.output)

    def _dispatch(self) -> None:
        """Waiting work to the actors, in order; an isolated sample fills its actor, so a crash is its own."""
        while self.waiting:
            work = self.waiting[0]
            if not self.pool.submit(work, "process", work.batch, work.pick, cost=SLOTS if work.isolated else 1):
                return
            self.waiting.popleft()
            work.tries += 1

    def _decode(self, entry: ShardEntry, skip: int = 0, single: int = 0) -> None:
        """Start the shard's decode task. Ray retries it when its process dies (3 times), decoding again from its
        first sample. A task isolating samples (`single`) is tried MAX_TRIES times, like a sample alone on a model
        actor, and decodes a sample only once the driver has read the one before (so the sample it dies on is the
        next one): Ray's `_generator_backpressure_num_objects=1`, its only knob for that (docs/adr/0001)."""
        options = {"num_cpus": self.decode_cpus}
        if single:
            options.update(max_retries=retry.MAX_TRIES - 1, _generator_backpressure_num_objects=1)
        stream = decode_shard.options(**options).remote(
            entry.shard.id, entry.shard.url, self.info["image_sizes"], self.config.batch_size, self.config.max_pixels,
            skip, single)
        self.streams[stream] = entry
        entry.restart_decoding(skip, single)

    def _read(self, stream) -> None:
        entry = self.streams[stream]
        try:
            ref = next(stream)
        except StopIteration:
            del self.streams[stream]
            entry.reading = False
            self._maybe_commit(entry)
            return
        if ref == stream.completed():  # not a batch: the task's error, after Ray's own retries
            del self.streams[stream]
            self._decode_died(entry, ref)
            return
        self.waiting.append(retry.Work(entry.shard.id, entry.new_batch(), ref))

    def _decode_died(self, entry: ShardEntry, failed) -> None:
        """Every attempt of the decode task died. Its batches are kept; a new task decodes from the first sample it
        did not deliver, a batch's worth one sample per batch. When it died decoding one sample alone, that sample
        becomes a `worker_crashed` row (read again, undecoded, by `crashed_sample`) and decoding resumes after it."""
        try:
            ray.get(failed)  # ready: its error
            why = "the decode task ended without its batches"
        except RayError as exc:
            why = retry.reason(exc)
        at = entry.delivered(self.config.batch_size)
        if at < entry.skip + entry.single:
            message = f"the process decoding its image died on every attempt: {why}"
            self.crashed_rows[crashed_sample.remote(entry.shard.id, entry.shard.url, at, message)] = (
                entry, entry.new_batch(from_task=False), f"sample {at}: {message}")
            at += 1
        self.emit({"event": "decode_restart", "shard": entry.shard.id, "reason": why, "at": at})
        self.ledger.count(entry, "decode_restarts")
        self._decode(entry, skip=at, single=self.config.batch_size)

    def _crashed_row(self, ref) -> None:
        entry, seq, message = self.crashed_rows.pop(ref)
        try:
            row = ray.get(ref)
        except RayError as exc:
            row = error_row(entry.shard.id, None, "worker_crashed", f"{message} ({retry.reason(exc)})")
        entry.put(seq, [(0, row)])
        self._maybe_commit(entry)

    def _finished(self, ref) -> None:
        work, result, counted = self.pool.finished(ref)
        entry = self.ledger.open[work.shard]
        if not isinstance(result, Exception):
            entry.put(work.seq, result)
            self._maybe_commit(entry)
            return
        work.tries -= not counted  # it shared the actor with the call whose crash was counted: not its fault
        step = retry.after_failure(work)
        if step is retry.Next.RETRY:
            self.ledger.count(entry, retry.retry_count(work))
            self.waiting.appendleft(work)
        elif step is retry.Next.SPLIT:
            work.failure = retry.reason(result)
            self.outlines[batch_outline.remote(work.batch)] = work
        else:
            entry.put(work.seq, [retry.error_row(work, isinstance(result, RayActorError), retry.reason(result))])
            self._maybe_commit(entry)

    def _split(self, ref) -> None:
        """The outline of a batch that failed as a whole arrived: its samples go out one by one."""
        work = self.outlines.pop(ref)
        entry = self.ledger.open[work.shard]
        try:
            pieces, rows = retry.split(work, ray.get(ref))
        except RayError as exc:  # the batch itself is lost: its decode task died
            entry.put(work.seq, [(-1, error_row(entry.shard.id, None, "decode_failed", retry.reason(exc)))])
            self._maybe_commit(entry)
            return
        self.ledger.count(entry, "batches_isolated")
        self.ledger.count(entry, "samples_isolated", len(pieces))
        self.emit(retry.isolated_event(work, pieces, work.failure))
        entry.put(work.seq, rows, done=not pieces)
        entry.outstanding += max(len(pieces) - 1, 0)
        self.waiting.extendleft(reversed(pieces))
        self._maybe_commit(entry)

    def _maybe_commit(self, entry: ShardEntry) -> None:
        if entry.ready:
            self.emit(self.ledger.committed_shard(entry, commit(self.out, entry, self.info["embedding_dim"])))
