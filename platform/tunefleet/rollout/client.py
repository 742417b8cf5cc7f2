"""Driver / trainer side of the RolloutPool: create or find the named pool actor, and read
its stream as a generator. (The actor itself is in pool.py.)"""

from __future__ import annotations

import ray

from tunefleet.config.rollout import RolloutConfig
from tunefleet.rollout.pool import RolloutPool


def create_pool(model_dir: str, cfg: RolloutConfig, *, detached: bool = False, namespace: str | None = None,
                wait: bool = True):
    """Get the pool named `cfg.name` or create it (owning `cfg.num_engines` engines).

    `detached=True` keeps it alive after this driver exits; find it again with `get_pool`.
    """
    actor = ray.remote(RolloutPool).options(
        name=cfg.name, namespace=namespace, get_if_exists=True, lifetime="detached" if detached else None,
        num_cpus=0, max_restarts=0,
    )
    pool = actor.remote(str(model_dir), cfg)
    if wait:
        ray.get(pool.start.remote())
    return pool


def get_pool(name: str, namespace: str | None = None):
    """The running pool called `name` (raises ValueError if there is none)."""
    return ray.get_actor(name, namespace=namespace)


def iter_batches(pool, size: int, timeout_s: float | None = None):
    """Yield the pool's stream in batches of `size` until nothing submitted is outstanding."""
    while True:
        batch = ray.get(pool.next_batch.remote(size, timeout_s))
        if not batch:
            return
        yield batch
