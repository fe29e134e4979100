"""The Ray wiring of CapFilt: decode tasks stream batches to model actors; the driver commits each shard.

With `ray_tasks.py` (what runs in decode workers), the only pipeline modules that import ray. Flow per shard: a
streaming decode task (CPU) yields batches -> the least busy model actor (one per GPU, or CPU) captions and scores
them -> when every batch of the shard is back, the driver writes its Parquet and then its done-marker. Memory is
bounded by the number of shards decoded at once and by the batches allowed to wait for an actor.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayError

from models.device import DeviceError
from models.loading import ModelLoadError, resolve
from pipelines.assemble import shard_stats, shard_table
from pipelines.config import CapFiltConfig, check_compatible, run_record
from pipelines.decode import error_row
from pipelines.ray_tasks import batch_outline, crashed_sample, decode_shard
from pipelines.sources import Shard, check_location, expand_shards
from pipelines.stage import CapFiltStage
from pipelines.writer import RunDir
from schemas.capfilt import RUN_FILE, no_retries

REPO_ROOT = str(Path(__file__).resolve().parents[1])
BATCHES_PER_ACTOR = 2  # in flight per actor: one running, one ready, so an actor never waits on the driver
WAITING_BATCHES = 4  # decoded batches allowed to wait for an actor, per actor
MAX_TRIES = 2  # a batch (then each of its samples) is tried this often before it becomes error rows
DEFAULT_GPU_BATCH, DEFAULT_CPU_BATCH = 64, 8
PROGRESS_EVERY = 30.0  # seconds between progress lines while shards are still open
RECOVERY_TIMEOUT = 600.0  # seconds a crashed model actor may take to come back before the job gives up


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


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


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
    """CapFiltStage plus what the driver asks of an actor before work starts. A model that cannot be loaded is
    reported by `info`, not raised: Ray would restart a failing actor forever and print its traceback."""

    def __init__(self, *args, **kwargs):
        self.load_error = None
        try:
            super().__init__(*args, **kwargs)
        except (ModelLoadError, DeviceError) as exc:
            self.load_error = str(exc)

    def info(self) -> dict:
        if self.load_error is not None:
            return {"error": self.load_error}
        return {**self.describe(), "image_sizes": self.image_sizes, "embedding_dim": self.embedding_dim}

    def process(self, batch: dict, subset: list[int] | None = None, with_errors: bool | None = None):
        return self(batch, subset, with_errors)


@dataclass
class Work:
    shard: str
    seq: int
    batch: ray.ObjectRef
    subset: list[int] | None = None  # None: the whole batch; else positions in batch['ok']
    with_errors: bool | None = None
    tries: int = 0
    crashes_seen: int = 0  # crashes of its actor known when it was dispatched
    isolated: bool = False  # runs alone on its actor, so a crash is its own and not a neighbour's


@dataclass
class ShardState:
    shard: Shard
    generator: object = None  # the current decode task's stream of batches
    started: float = field(default_factory=time.time)
    batches: int = 0
    reading: bool = True
    outstanding: int = 0
    rows: dict = field(default_factory=dict)  # (seq, position) -> row
    skip: int = 0  # samples the current decode task passes over: delivered by (or lost with) tasks that died
    single: int = 0  # samples after those that it delivers one per batch
    task_batches: int = 0  # batches read from it
    retries: dict = field(default_factory=no_retries)  # work redone after failures (schemas.capfilt.RETRY_COUNTS)

    def delivered(self, batch_size: int) -> int:
        """The number of the shard's first sample that the current decode task has not delivered."""
        singles = min(self.task_batches, self.single)
        return self.skip + singles + (self.task_batches - singles) * batch_size


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


def run_capfilt(config: CapFiltConfig, log=print, actor_class: type = None) -> dict:
    """Run CapFilt over config.input into config.output; returns the summary it prints at the end.

    `actor_class` (a ModelActor subclass) lets the reliability tests inject crashes; the job never sets it.
    """
    config.validate()
    resolve(config.captioner), resolve(config.filter)  # unknown names fail here, before any actor starts
    check_location(config.output)
    shards = expand_shards(config.input)
    out = RunDir(config.output)
    connect()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    n_actors = config.actors or max(gpus, 1)
    if config.batch_size is None:
        # BLIP-base on a 2-core CPU: 1.05 images/s at batch 8, 0.88 at batch 32 (cache-bound); GPUs want more.
        config = replace(config, batch_size=DEFAULT_GPU_BATCH if gpus else DEFAULT_CPU_BATCH)
    plan = plan_resources(cpus, gpus, n_actors)
    actor_options = dict(max_restarts=-1, max_task_retries=0, max_concurrency=1, num_cpus=plan["actor_cpus"])
    if gpus:
        actor_options.update(num_gpus=1)
    device = "cuda" if gpus and config.device == "auto" else config.device
    threads = config.model_threads or (None if gpus else os.cpu_count())
    actor_class = ray.remote(actor_class or ModelActor)
    actors = [
        actor_class.options(**actor_options).remote(config.captioner, config.filter, config.sampling, device,
                                                    config.precision, threads)
        for _ in range(n_actors)
    ]
    try:
        return _run(config, shards, out, actors, plan, n_actors, log)
    finally:
        for actor in actors:
            ray.kill(actor)  # free their CPUs / GPUs now, not when the driver's handles are collected


def _run(config: CapFiltConfig, shards: list[Shard], out: RunDir, actors: list, plan: dict, n_actors: int, log) -> dict:
    info = ray.get(actors[0].info.remote())
    if "error" in info:
        raise ModelLoadError(info["error"])
    record = run_record(config, [s.url for s in shards], info)
    existing = out.read_json(out.path(RUN_FILE))
    if existing is not None and not config.overwrite:
        check_compatible(existing, record)  # the same run: resume it, keeping its record
    else:
        out.clear()
        out.write_json(out.path(RUN_FILE), record)

    done = out.done_shards()
    todo = deque(s for s in shards if s.id not in done)
    log(f"capfilt: {len(shards)} shards ({len(shards) - len(todo)} already done), {n_actors} model actor(s) on "
        f"{info['device']} ({info['precision']}), captioner {config.captioner}, filter {config.filter}")
    decode_workers = config.decode_workers or plan["decode_workers"]
    scheduler = _Scheduler(actors, info, config, out, log, total=len(shards), already=len(shards) - len(todo),
                           decode_cpus=plan["decode_cpus"])
    summary = scheduler.run(todo, max_active=decode_workers + 1)
    log(_summary_line(summary))
    return summary


class _Scheduler:
    def __init__(self, actors, info, config: CapFiltConfig, out: RunDir, log, total: int, already: int,
                 decode_cpus: float = 1.0):
        self.actors, self.info, self.config, self.out, self.log = actors, info, config, out, log
        self.decode_cpus = decode_cpus
        self.load = {i: 0 for i in range(len(actors))}
        self.crashes = {i: 0 for i in range(len(actors))}  # crashes seen per actor
        self.down: dict[int, float] = {}  # crashed actor -> when its crash was seen; no work goes to it
        self.probes: dict[ray.ObjectRef, int] = {}  # info() calls that tell when a restarted actor is back
        self.waiting: deque[Work] = deque()
        self.inflight: dict[ray.ObjectRef, tuple[Work, int, int]] = {}
        self.active: dict[str, ShardState] = {}
        self.total, self.committed = total, already
        self.samples = self.errors = self.ok = 0
        self.retries = no_retries()  # over the run, open shards included (they are what is slow now)
        self.started = self.last_progress = time.time()

    def run(self, todo: deque[Shard], max_active: int) -> dict:
        while todo or self.active:
            while todo and len(self.active) < max_active:
                self._start(todo.popleft())
            self._dispatch()
            readable = [s.generator for s in self.active.values()
                        if s.reading and len(self.waiting) < WAITING_BATCHES * len(self.actors)]
            ready, _ = ray.wait(readable + list(self.inflight) + list(self.probes), num_returns=1, timeout=1.0)
            for item in ready:
                if item in self.probes:
                    self._probed(item)
                elif item in self.inflight:
                    self._finish_work(item)
                else:
                    self._read_next(item)
            if time.time() - self.last_progress > PROGRESS_EVERY:
                self._progress()
        elapsed = time.time() - self.started
        return {"shards": self.total, "committed": self.committed, "samples": self.samples, "ok": self.ok,
                "errors": self.errors, "retries": dict(self.retries), "seconds": round(elapsed, 2),
                "samples_per_second": round(self.samples / elapsed, 2) if elapsed else None,
                "output": self.config.output}

    def _progress(self) -> None:
        """A line while long shards are open: what is scored so far, committed or not."""
        self.last_progress = time.time()
        pending = sum(len(s.rows) for s in self.active.values())
        elapsed = self.last_progress - self.started
        self.log(f"[{self.committed}/{self.total} shards] {len(self.active)} open, {self.samples + pending} samples "
                 f"scored, {(self.samples + pending) / elapsed:.1f}/s, {self.errors} errors in committed shards"
                 f"{_retries_text(self.retries)}")

    def _start(self, shard: Shard) -> None:
        self.active[shard.id] = state = ShardState(shard)
        self._decode(state)

    def _decode(self, state: ShardState, skip: int = 0, single: int = 0) -> None:
        """Start the shard's decode task. Ray retries it when its process dies (3 times), decoding again from its first
        sample. A task isolating samples (`single`) is tried MAX_TRIES times, like a sample alone on a model actor, and
        decodes a sample only once the driver has read the one before (so the sample it dies on is the next one)."""
        options = {"num_cpus": self.decode_cpus}
        if single:
            options.update(max_retries=MAX_TRIES - 1, _generator_backpressure_num_objects=1)
        state.generator = decode_shard.options(**options).remote(
            state.shard.id, state.shard.url, self.info["image_sizes"], self.config.batch_size, self.config.max_pixels,
            skip, single)
        state.skip, state.single, state.task_batches = skip, single, 0

    def _read_next(self, generator) -> None:
        state = next(s for s in self.active.values() if s.generator is generator)
        try:
            ref = next(generator)
        except StopIteration:
            state.reading = False
            self._maybe_commit(state)
            return
        if ref == generator.completed():  # not a batch: the task's error, after Ray's own retries
            self._decode_crashed(state, ref)
            return
        self.waiting.append(Work(state.shard.id, state.batches, ref))
        state.batches += 1
        state.task_batches += 1
        state.outstanding += 1

    def _decode_crashed(self, state: ShardState, failed: ray.ObjectRef) -> None:
        """The decode task's process died on each of its attempts. Its batches are kept, and a new task decodes from
        the first sample it did not deliver, the next batch's worth one sample per batch: when that task dies while
        decoding one sample alone, that sample becomes a `worker_crashed` row and decoding resumes after it."""
        try:
            ray.get(failed)
            reason = "the decode task ended without its batches"
        except RayError as exc:
            reason = _reason(exc)
        at = state.delivered(self.config.batch_size)
        if at < state.skip + state.single:
            message = f"the process decoding its image died on every attempt: {reason}"
            try:
                row = ray.get(crashed_sample.remote(state.shard.id, state.shard.url, at, message))
            except RayError as exc:
                row = error_row(state.shard.id, None, "worker_crashed", f"sample {at}: {message} ({_reason(exc)})")
            state.rows[(state.batches, 0)] = row
            state.batches += 1
            at += 1
        self.log(f"{state.shard.id}: a decode process died ({reason}); decoding resumes at sample {at}")
        self._count(state, "decode_restarts")
        self._decode(state, skip=at, single=self.config.batch_size)

    def _dispatch(self) -> None:
        while self.waiting:
            work = self.waiting[0]
            cost = BATCHES_PER_ACTOR if work.isolated else 1  # an isolated piece fills its actor
            up = [i for i in self.load if i not in self.down]
            actor = min(up, key=self.load.get, default=None)
            if actor is None or self.load[actor] + cost > BATCHES_PER_ACTOR:
                return
            self.waiting.popleft()
            work.tries += 1
            work.crashes_seen = self.crashes[actor]
            ref = self.actors[actor].process.remote(work.batch, work.subset, work.with_errors)
            self.inflight[ref] = (work, actor, cost)
            self.load[actor] += cost

    def _finish_work(self, ref) -> None:
        work, actor, cost = self.inflight.pop(ref)
        self.load[actor] -= cost
        state = self.active[work.shard]
        try:
            rows = ray.get(ref)
        except RayActorError as exc:
            if work.crashes_seen < self.crashes[actor]:
                work.tries -= 1  # it shared the actor with the work whose crash was counted: not its fault
            else:
                self._actor_crashed(actor)
            self._retry(work, state, exc)
            return
        except RayError as exc:
            self._retry(work, state, exc)
            return
        for position, row in rows:
            state.rows[(work.seq, position)] = row
        self._done_work(state)

    def _actor_crashed(self, actor: int) -> None:
        """Ray restarts a crashed actor; until a call has run on the new process, work sent to it could still reach
        the dead one and fail for nothing, so none is sent."""
        self.crashes[actor] += 1
        self.down.setdefault(actor, time.time())
        self.probes[self.actors[actor].info.remote()] = actor

    def _probed(self, ref) -> None:
        actor = self.probes.pop(ref)
        try:
            info = ray.get(ref)
        except RayActorError:
            if time.time() - self.down[actor] > RECOVERY_TIMEOUT:
                raise RuntimeError(f"model actor {actor} crashed and did not come back within "
                                   f"{RECOVERY_TIMEOUT:.0f}s; see the Ray logs for why it dies on start") from None
            time.sleep(0.2)
            self.probes[self.actors[actor].info.remote()] = actor
            return
        if "error" in info:
            raise ModelLoadError(f"model actor {actor} restarted after a crash but: {info['error']}")
        del self.down[actor]
        self.log(f"model actor {actor} is back after a crash; its work is retried")

    def _retry(self, work: Work, state: ShardState, exc: Exception) -> None:
        """Try a failed batch again; then sample by sample, each alone on its actor (a dying actor also fails the
        other call queued on it); a sample that fails twice alone becomes an error row."""
        if work.tries < MAX_TRIES:
            self._count(state, "samples_retried" if work.isolated else "batches_retried")
            self.waiting.appendleft(work)
            return
        try:
            outline = ray.get(batch_outline.remote(work.batch))
        except RayError as decode_exc:  # the batch itself is lost: its decode task died
            state.rows[(work.seq, -1)] = error_row(state.shard.id, None, "decode_failed", _reason(decode_exc))
            self._done_work(state)
            return
        subset = list(range(len(outline))) if work.subset is None else work.subset
        if work.subset is None or len(subset) > 1:
            pieces = [Work(work.shard, work.seq, work.batch, [p], with_errors=False, isolated=True) for p in subset]
            if work.subset is None:  # the rows that failed before the models still need writing
                pieces.append(Work(work.shard, work.seq, work.batch, [], with_errors=True))
            state.outstanding += len(pieces) - 1
            self.waiting.extendleft(reversed(pieces))
            self._count(state, "batches_isolated")
            self._count(state, "samples_isolated", len(subset))
            keys = [outline[p][1].get("key") for p in subset]
            span = f"{keys[0]}..{keys[-1]}" if len(keys) > 1 else f"{keys[0]}" if keys else "none decoded"
            self.log(f"{state.shard.id}: batch {work.seq} (samples {span}) failed {work.tries} times; its "
                     f"{len(subset)} samples now run one at a time, each alone on its actor (slower): {_reason(exc)}")
            return
        position, row = outline[subset[0]]
        kind = "worker_crashed" if isinstance(exc, RayActorError) else "model_failed"
        state.rows[(work.seq, position)] = {**row, "status": "error", "error_type": kind,
                                            "error_message": f"failed {MAX_TRIES} times on its own: {_reason(exc)}"}
        self._done_work(state)

    def _count(self, state: ShardState, what: str, n: int = 1) -> None:
        state.retries[what] += n
        self.retries[what] += n

    def _done_work(self, state: ShardState) -> None:
        state.outstanding -= 1
        self._maybe_commit(state)

    def _maybe_commit(self, state: ShardState) -> None:
        if state.reading or state.outstanding:
            return
        rows = [state.rows[key] for key in sorted(state.rows)]
        table = shard_table(rows, self.info["embedding_dim"])
        stats = shard_stats(state.shard.id, state.shard.url, rows, state.started, state.retries)
        self.out.commit_shard(state.shard.id, table, stats)
        del self.active[state.shard.id]
        self.committed += 1
        self.samples += stats["samples"]
        self.ok += stats["ok"]
        self.errors += sum(stats["errors"].values())
        self.last_progress = time.time()
        elapsed = self.last_progress - self.started
        self.log(f"[{self.committed}/{self.total} shards] {state.shard.id}: {stats['samples']} samples, "
                 f"{stats['ok']} ok{_retries_text(stats['retries'])} | run: {self.samples} samples, "
                 f"{self.samples / elapsed:.1f}/s, {self.errors} errors")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


def _retries_text(counts: dict) -> str:
    """', 2 batches retried, 1 isolated (8 samples alone, 1 retried), 1 decode restart', or '' when all are 0."""
    parts = []
    if counts["batches_retried"]:
        parts.append(f"{counts['batches_retried']} batch{'es' if counts['batches_retried'] > 1 else ''} retried")
    if counts["batches_isolated"]:  # samples run (and retried) alone only come from an isolated batch
        alone = f"{counts['samples_isolated']} sample{'s' if counts['samples_isolated'] != 1 else ''} alone"
        if counts["samples_retried"]:
            alone += f", {counts['samples_retried']} retried"
        parts.append(f"{counts['batches_isolated']} isolated ({alone})")
    if counts["decode_restarts"]:
        parts.append(f"{counts['decode_restarts']} decode restart{'s' if counts['decode_restarts'] > 1 else ''}")
    return "".join(f", {part}" for part in parts)


def _summary_line(summary: dict) -> str:
    return (f"capfilt done: {summary['committed']}/{summary['shards']} shards, {summary['samples']} samples "
            f"({summary['ok']} ok, {summary['errors']} errors{_retries_text(summary['retries'])}) "
            f"in {summary['seconds']}s "
            f"({summary['samples_per_second']} samples/s) -> {summary['output']}")
