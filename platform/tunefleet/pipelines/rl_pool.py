"""The driver's side of online RL: start the run's RolloutPool before the fit, log its
metrics to MLflow while the fit runs, and shut it down afterwards.

Only the driver talks to the pool's lifecycle; the trainer's rank 0 finds it by name.
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
        warnings.warn(f"rollout pool {name} did not shut down cleanly: {err}")
    finally:
        ray.kill(pool)


@contextmanager
def rollout_pool(cfg: Config, model_dir: str, name: str, tracker):
    """Yield the loop_config entries RL needs (pool name and config, reward specs) with the
    pool up; rank 0 finds the pool by name (and rebuilds it from the config if it is lost)."""
    from tunefleet.rollout.client import create_pool

    rc = pool_config(cfg, name)
    print(f"[driver] starting rollout pool {rc.name}: {rc.num_engines} engine(s) x "
          f"{rc.resources_per_engine} CPU", flush=True)
    pool = create_pool(model_dir, rc)  # keep the handle: an actor dies with its last handle
    stop = threading.Event()
    poller = threading.Thread(target=_log_metrics, args=(rc.name, tracker, stop), daemon=True)
    poller.start()
    try:
        yield {"pool_name": rc.name, "pool_config": rc, "rewards": reward_specs(cfg)}
    finally:
        stop.set()
        _shutdown(rc.name, tracker, cfg.trainer.max_steps)
        del pool
