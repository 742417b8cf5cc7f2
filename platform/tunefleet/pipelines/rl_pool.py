"""The driver's side of online RL: start the run's RolloutPool before the fit, log its
metrics to MLflow while the fit runs, and shut it down afterwards.

Only the driver talks to the pool's lifecycle; the trainer's rank 0 finds it by name.
"""

from __future__ import annotations

import dataclasses
import threading
from contextlib import contextmanager

from tunefleet.config import Config, RewardSpec

METRICS_EVERY_S = 10.0


def pool_config(cfg: Config, name: str):
    """The run's rollout config: named after the run, LoRA-enabled when training LoRA
    (adapter rank at least the trained one), seeded from the trainer."""
    rc = cfg.rollout
    lora = cfg.model.lora
    return dataclasses.replace(
        rc, name=f"{name}-rollout", seed=cfg.trainer.seed,
        enable_lora=rc.enable_lora or lora is not None,
        max_lora_rank=max(rc.max_lora_rank, lora.r if lora is not None else 0),
    )


def reward_specs(cfg: Config) -> tuple[RewardSpec, ...]:
    """`rewards:`, or a built-in task's verifier when none are given."""
    return tuple(cfg.rewards) or (RewardSpec("task"),)


def _log_metrics(pool, tracker, stop: threading.Event) -> None:
    """Every few seconds: the pool's metrics into the run, at the pool's policy version."""
    import ray

    while not stop.wait(METRICS_EVERY_S):
        try:
            snap = ray.get(pool.metrics.remote(), timeout=10)
            tracker.log_metrics(snap, step=int(snap.get("rollout/policy_version", 0)))
        except Exception:  # noqa: BLE001 - metrics are best effort; training goes on
            continue


@contextmanager
def rollout_pool(cfg: Config, model_dir: str, name: str, tracker):
    """Yield the loop_config entries RL needs (pool name, reward specs) with the pool up."""
    import ray

    from tunefleet.rollout.client import create_pool

    rc = pool_config(cfg, name)
    print(f"[driver] starting rollout pool {rc.name}: {rc.num_engines} engine(s) x "
          f"{rc.resources_per_engine} CPU", flush=True)
    pool = create_pool(model_dir, rc)
    stop = threading.Event()
    poller = threading.Thread(target=_log_metrics, args=(pool, tracker, stop), daemon=True)
    poller.start()
    try:
        yield {"pool_name": rc.name, "rewards": reward_specs(cfg)}
    finally:
        stop.set()
        try:
            tracker.log_metrics(ray.get(pool.metrics.remote(), timeout=30), step=cfg.trainer.max_steps)
            ray.get(pool.shutdown.remote(), timeout=60)
        finally:
            ray.kill(pool)
