"""Model actors on Ray: started with their resources, every one's model load checked before work is sent, the next
call to the least busy, and a crashed actor held back until a call has run on its restarted process."""
from __future__ import annotations

import time

import ray
from ray.exceptions import RayActorError

from models.names import ModelLoadError

SLOTS = 2  # calls in flight per actor: one running, one ready, so an actor never waits on the driver
PROBE_PAUSE = 0.2  # seconds between two probes of a restarting actor
RECOVERY_TIMEOUT = 600.0  # seconds a crashed model actor may take to come back before the job gives up


def check_gpus(requested: int | None, gpus: int, needs_gpu: bool) -> int:
    """The number of model actors: one per GPU by default; more actors than GPUs would never be placed."""
    if needs_gpu and requested and requested > gpus:
        raise ValueError(f"--actors {requested}: the cluster has {gpus} GPU(s) and each model actor takes one; "
                         f"use --actors {gpus} or fewer (or --device cpu)")
    return requested or max(gpus, 1)


class ActorPool:
    def __init__(self, actor_class: type, args: tuple, n: int, options: dict):
        remote = ray.remote(actor_class)
        self.actors = [remote.options(**options).remote(*args) for _ in range(n)]
        self.load = [0] * n  # slots taken per actor
        self.crashes = [0] * n  # crashes seen per actor
        self.down: dict[int, float] = {}  # crashed actor -> when its crash was seen; no call goes to it
        self.probes: dict[ray.ObjectRef, int] = {}  # info() calls that tell when a restarted actor is back
        self.probe_at: dict[int, float] = {}  # actor -> when to probe it again
        self.calls: dict[ray.ObjectRef, tuple[object, int, int, int]] = {}  # ref -> (work, actor, cost, crashes)

    def check_loaded(self, failure=lambda info: info.get("error")) -> list[dict]:
        """Every actor's `info()`, waited for before any work is sent. An actor reports a model it could not load
        (`failure(info)`: its reason, else None) instead of raising, as Ray would restart it forever; one such
        actor stops the job, with its reason."""
        infos = ray.get([actor.info.remote() for actor in self.actors])
        for number, info in enumerate(infos):
            if failure(info):
                raise ModelLoadError(f"model actor {number} could not load its models: {failure(info)}")
        return infos

    def submit(self, work, method: str, *args, cost: int = 1) -> bool:
        """Call `method(*args)` for `work` on the least busy actor that is up and has `cost` slots free."""
        up = [i for i in range(len(self.actors)) if i not in self.down]
        actor = min(up, key=self.load.__getitem__, default=None)
        if actor is None or self.load[actor] + cost > SLOTS:
            return False
        ref = getattr(self.actors[actor], method).remote(*args)
        self.calls[ref] = (work, actor, cost, self.crashes[actor])
        self.load[actor] += cost
        return True

    def finished(self, ref) -> tuple[object, object, bool]:
        """(work, its result or the exception it raised, whether the failure counts against it) of a finished call.
        A call that failed because the call before it crashed their actor does not count."""
        work, actor, cost, crashes_seen = self.calls.pop(ref)
        self.load[actor] -= cost
        try:
            return work, ray.get(ref), True
        except RayActorError as exc:
            if crashes_seen < self.crashes[actor]:
                return work, exc, False
            self._crashed(actor)
            return work, exc, True
        except ray.exceptions.RayError as exc:
            return work, exc, True

    def _crashed(self, actor: int) -> None:
        """Ray restarts a crashed actor; until a call has run on the new process, work sent to it could still reach
        the dead one and fail for nothing, so none is sent."""
        self.crashes[actor] += 1
        self.down.setdefault(actor, time.time())
        self.probe_at[actor] = 0.0

    def refs(self) -> list:
        now = time.time()
        for actor, when in list(self.probe_at.items()):
            if when <= now:
                del self.probe_at[actor]
                self.probes[self.actors[actor].info.remote()] = actor
        return list(self.calls) + list(self.probes)

    def probed(self, ref) -> int | None:
        """The actor whose probe `ref` is, when it is back; None while it is still restarting."""
        actor = self.probes.pop(ref)
        try:
            info = ray.get(ref)
        except RayActorError:
            if time.time() - self.down[actor] > RECOVERY_TIMEOUT:
                raise RuntimeError(f"model actor {actor} crashed and did not come back within "
                                   f"{RECOVERY_TIMEOUT:.0f}s; see the Ray logs for why it dies on start") from None
            self.probe_at[actor] = time.time() + PROBE_PAUSE
            return None
        if "error" in info:
            raise ModelLoadError(f"model actor {actor} restarted after a crash but: {info['error']}")
        del self.down[actor]
        return actor

    def kill(self) -> None:
        """Free their CPUs / GPUs now, not when the driver's handles are collected."""
        for actor in self.actors:
            ray.kill(actor)
