"""The driver's side of online RL: start the run's RolloutPool before the fit, log its
metrics to MLflow while the fit runs, and shut it down afterwards.

Only the driver talks to the pool's lifecycle; the trainer's rank 0 finds it by name. A pool
the trainer must rebuild mid-run is made by the driver's PoolKeeper: nothing the run starts
outlives the driver (Ray ends an actor when its owner dies), even a driver that crashed.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from contextlib import contextmanager

from tunefleet.config import Config, RewardSpec
from tunefleet.config.rollout import engine_lora_rank

METRICS_EVERY_S = 10.0


def pool_config(cfg: Config, name: str):
    """The run's rollout config: named after the run, LoRA-enabled when training LoRA with
    adapter sync (adapter rank at least the trained one), seeded from the trainer."""
    rc = cfg.rollout
    lora = cfg.model.lora
    return dataclasses.replace(
        rc, name=f"{name}-rollout", seed=cfg.trainer.seed,
        enable_lora=rc.enable_lora or (lora is not None and rc.lora_sync == "adapter"),
        max_lora_rank=engine_lora_rank(max(rc.max_lora_rank, lora.r if lora is not None else 0)),
    )


def reward_specs(cfg: Config) -> tuple[RewardSpec, ...]:
    """`rewards:`, or a built-in task's verifier when none are given."""
    return tuple(cfg.rewards) or (RewardSpec("task"),)


def check_rewards(cfg: Config) -> None:
    """Build the run's rewards once in the driver, before anything starts: a bad param, or a
    `code_exec` sandbox that cannot isolate on this machine, stops the run here, loudly."""
    from tunefleet.rewards import build_reward

    build_reward(reward_specs(cfg), cfg.data.task)


class PoolKeeper:
    """Wrap with `ray.remote` (`rollout_pool` does). Creates replacement pools when rank 0
    asks (`create`) and owns them, so they survive a restarted worker group (which finds
    them by name) and die with the driver that owns the keeper."""

    def __init__(self, model_dir: str, cfg):
        self.model_dir, self.cfg, self.pool = model_dir, cfg, None

    def create(self):
        """A new pool under the run's pool name, once its engines are ready; its handle."""
        from tunefleet.rollout.client import create_pool

        self.pool = create_pool(self.model_dir, self.cfg)  # held here: an actor dies with its last handle
        return self.pool


def keeper_name(pool_name: str) -> str:
    return f"{pool_name}-keeper"


def _log_metrics(name: str, tracker, stop: threading.Event) -> None:
    """Every few seconds: the pool's metrics into the run, at the pool's policy version.
    Looked up by name each time: the trainer may have rebuilt the pool."""
    import ray

    from tunefleet.rollout.client import get_pool

    while not stop.wait(METRICS_EVERY_S):
        try:
            snap = ray.get(get_pool(name).metrics.remote(), timeout=10)
            tracker.log_metrics(snap, step=int(snap.get("rollout/policy_version", 0)))
        except Exception:  # noqa: BLE001 - metrics are best effort; training goes on
            continue


def _shutdown(name: str, tracker, step: int) -> None:
    """Log the pool's final metrics and stop it (whichever pool holds the name now)."""
    import ray

    from tunefleet.rollout.client import get_pool

    try:
        pool = get_pool(name)
    except ValueError:
        return
    try:
        tracker.log_metrics(ray.get(pool.metrics.remote(), timeout=30), step=step)
        ray.get(pool.shutdown.remote(), timeout=60)
    except Exception as err:  # noqa: BLE001 - the run's result must not hinge on a pool's exit
        warnings.warn(f"rollout pool {name} did not shut down cleanly: {err}", stacklevel=2)
    finally:
        ray.kill(pool)


@contextmanager
def rollout_pool(cfg: Config, model_dir: str, name: str, tracker):
    """Yield the loop_config entries RL needs (pool name and config, reward specs) with the
    pool up; rank 0 finds the pool by name (and rebuilds it from the config if it is lost)."""
    import ray

    from tunefleet.rollout.client import create_pool

    rc = pool_config(cfg, name)
    print(f"[driver] starting rollout pool {rc.name}: {rc.num_engines} engine(s) x "
          f"{rc.resources_per_engine} CPU", flush=True)
    pool = create_pool(model_dir, rc)  # keep the handle: an actor dies with its last handle
    keeper = ray.remote(PoolKeeper).options(name=keeper_name(rc.name), num_cpus=0, max_restarts=0)
    keeper = keeper.remote(model_dir, rc)  # not detached: it, and what it creates, die with this driver
    stop = threading.Event()
    poller = threading.Thread(target=_log_metrics, args=(rc.name, tracker, stop), daemon=True)
    poller.start()
    try:
        yield {"pool_name": rc.name, "pool_config": rc, "rewards": reward_specs(cfg),
               "pool_keeper": keeper_name(rc.name)}
    finally:
        stop.set()
        _shutdown(rc.name, tracker, cfg.trainer.max_steps)
        ray.kill(keeper)
        del pool
