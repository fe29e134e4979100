"""The Ray wiring of evaluation: ModelHost actors holding every model role, and ordered batched calls to them.

The only evaluation module that imports ray. One actor per GPU (one on a CPU-only cluster) holds the roles of the
run, as the CapFilt job's model actor holds its captioner and filter. A pool keeps a few calls in flight per actor,
so an actor never waits while the driver decodes the next batch, and yields results in submission order.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import ray

from evaluation.calls import Method
from evaluation.serving import ModelHost
from pipelines.actor_pool import ActorPool
from pipelines.ray_runner import connect

IN_FLIGHT = 2  # calls queued per actor: one running, one ready


@dataclass
class RolePool:
    """One role on the actors. `info` describes its loaded model (name, fingerprint, device, image size)."""

    role: str
    actors: list
    info: dict

    @property
    def size(self) -> int:
        return len(self.actors)

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    def map(self, method: Method, calls: Iterable[tuple[int | None, tuple]]) -> Iterator:
        """Results of `method(*args)` for each `(actor, args)` call, in order. `actor` is None for any actor (round
        robin), or an index when the call must reach one actor (retrieval keeps each image's vision states on the
        actor that encoded it). An unknown method is a ValueError here, on the driver."""
        method = Method(method)
        pending: deque = deque()
        for number, (actor, args) in enumerate(calls):
            target = self.actors[number % len(self.actors) if actor is None else actor]
            pending.append(target.call.remote(self.role, method, *args))
            while len(pending) >= IN_FLIGHT * len(self.actors):
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    def broadcast(self, method: Method, *args) -> list:
        method = Method(method)
        return ray.get([actor.call.remote(self.role, method, *args) for actor in self.actors])


def start_pools(models: dict[str, tuple], device: str = "auto", precision: str = "auto",
                threads: int | None = None) -> dict[str, RolePool]:
    """Start the model actors: {role: (model name, model task[, image size or None])} -> {role: RolePool}.

    A model that cannot be loaded stops the actors and raises ModelLoadError with the model's own reason.
    """
    connect()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # No restarts, unlike CapFilt's actors: an evaluation call is not retried, so a crash fails its task.
    options = dict(max_restarts=0, max_concurrency=1, num_cpus=min(1.0, float(ray.cluster_resources()["CPU"])),
                   num_gpus=1 if gpus else 0)
    pool = ActorPool(ModelHost, (models, device, precision, threads), max(gpus, 1), options)
    try:
        infos = pool.check_loaded(failure=lambda info: "; ".join(
            f"role {role!r}: {role_info['error']}" for role, role_info in info.items() if role_info.get("error")))
    except BaseException:
        pool.kill()
        raise
    return {role: RolePool(role, pool.actors, infos[0][role]) for role in models}


def stop_actors(actors: list) -> None:
    """Kill the actors now, freeing their CPUs / GPUs and memory."""
    for actor in actors:
        ray.kill(actor)


def stop_pools(pools: dict[str, RolePool]) -> None:
    stop_actors(list({id(a): a for pool in pools.values() for a in pool.actors}.values()))
