"""CUDA paths of the training code on one GPU: FSDP2, grad accumulation, LoRA, DPO, NCCL, throughput.

A standalone script (no Ray, no MLflow, no downloads): it builds its models from code, sets
up a one-rank process group (NCCL on CUDA, gloo on CPU), and runs tunefleet's own training
step (build_policy, shard, StepContext, train_step) exactly as train/loop.py's `_setup` wires
it. Each check prints PASS/FAIL with its numbers; all results go to $OUT/gpu_check.json (or
--json) after every check, so a run cut short still leaves what it measured.

    .venv/bin/python bench/gpu_check.py --smoke          # CPU, gloo, tiny model: a quick self-test
    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py        # on a GPU machine (see bench/GPU.md)

With one GPU the world is 1: `shard` is applied explicitly on a world-1 mesh (build_policy
shards only when world_size > 1) so that the FSDP2 code path (DTensor parameters, hooks,
set_requires_gradient_sync, full state dicts) runs, and the collectives are called once through
their world-1 shortcut and once through torch.distributed itself (see check_collectives).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

# The device machine has no ray, mlflow or vllm (no network, wheels too large to carry). Make
# them unimportable here too, so a local --smoke run fails the same way if any module this
# script uses started importing them. (None in sys.modules: `import x` raises ImportError and
# importlib.util.find_spec("x") returns None, i.e. "not installed".)
ABSENT_ON_DEVICE = ("ray", "mlflow", "vllm", "gguf")
for _name in ABSENT_ON_DEVICE:
    sys.modules.setdefault(_name, None)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in the log

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s, datasheet (the MFU denominator)
RESULTS: dict = {"checks": {}, "env": {}}


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU self-test: tiny model, seq 64, a couple of steps")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seq", type=int, default=2048, help="throughput sequence length")
    p.add_argument("--micro-batch", type=int, default=8, help="throughput micro-batch (sequences)")
    p.add_argument("--extra-micro-batch", type=int, default=16, help="a second throughput point (0: none)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed throughput steps")
    p.add_argument("--smol-layers", type=int, default=30, help="SmolLM2-shaped model depth (30: the real one)")
    p.add_argument("--check-seq", type=int, default=256, help="max row length in checks a-d (--smoke: 64)")
    p.add_argument("--only", default="", help="comma-separated check names to run (default: all)")
    p.add_argument("--json", type=Path, default=None, help="default: $OUT/gpu_check.json when OUT is set")
    args = p.parse_args(argv)
    if args.smoke:
        args.seq, args.micro_batch, args.extra_micro_batch, args.warmup, args.steps = 64, 2, 0, 1, 2
        args.check_seq = 64
    return args


# ---------------------------------------------------------------------------------------------
# setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_dist(device: torch.device) -> str:
    """One rank: NCCL on CUDA (eagerly bound to the device), gloo on CPU. Should NCCL fail to
    start, the error is recorded and gloo is used, so that the other checks still report."""
    import datetime

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    timeout = datetime.timedelta(seconds=120)
    if device.type == "cuda":
        try:
            dist.init_process_group("nccl", rank=0, world_size=1, device_id=device, timeout=timeout)
            dist.barrier()
            return str(dist.get_backend())
        except Exception as err:  # noqa: BLE001 - recorded; the checks then say what still works
            RESULTS["env"]["nccl_init_error"] = f"{type(err).__name__}: {err}"
            log(f"NCCL init FAILED ({err}); falling back to gloo")
            if dist.is_initialized():
                dist.destroy_process_group()
            os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1, timeout=timeout)
    return str(dist.get_backend())


def build_models(root: Path, smoke: bool, smol_layers: int = 30) -> dict[str, Path]:
    """tiny: tunefleet's own tiny Llama; smol: a SmolLM2-135M-shaped random Llama with the
    locally built byte-level tokenizer (259 tokens; ids < vocab 49,152 are all valid)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from tunefleet.models.tiny import build_tiny_llama, build_tiny_tokenizer

    dirs = {"tiny": root / "tiny"}
    build_tiny_llama(dirs["tiny"])
    if smoke:
        return dirs
    dirs["smol"] = root / "smol135m"
    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=smol_layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=None,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    init_device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(init_device):  # random init of 135M parameters is seconds on the GPU
        model = LlamaForCausalLM(cfg).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(dirs["smol"], safe_serialization=True)
    tok.save_pretrained(dirs["smol"])
    del model
    return dirs


def model_vocab(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def make_ctx(model_dir: Path, device: torch.device, *, shard_it: bool, lora=None, algo=None, bf16: bool = False,
             lr: float = 1e-4, max_grad_norm: float = 1.0, live_ref: bool = False):
    """A StepContext built like train/loop.py `_setup` (world 1), optionally FSDP2-sharded."""
    from tunefleet.algorithms import get_loss
    from tunefleet.config import SftConfig, TrainerConfig
    from tunefleet.models.policy import build_policy, shard
    from tunefleet.train.schedule import lr_factor
    from tunefleet.train.step import StepContext, autocast_bf16

    algo = algo or SftConfig()
    t = TrainerConfig(lr=lr, lr_schedule="constant", bf16=bf16, max_grad_norm=max_grad_norm, max_steps=1000)
    torch.manual_seed(t.seed)
    policy = build_policy(str(model_dir), "float32", lora, device, 1)
    if shard_it:  # build_policy shards only when world_size > 1: a world-1 mesh, explicitly
        shard(policy.module)
        policy.sharded = True
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.max_steps, t.warmup_steps, t.lr_schedule, t.min_lr_ratio))
    use_bf16 = autocast_bf16(t.bf16, device.type)
    reference = None
    if live_ref:
        from tunefleet.train.reference import live_reference

        reference = live_reference(str(model_dir), policy, device, 1, "float32", use_bf16)
    return StepContext(policy, optimizer, scheduler, get_loss(algo.type), algo, device, 1, t.max_grad_norm,
                       use_bf16, reference)


def release() -> None:
    """Free what the caller has already dropped (`del`), on the GPU too."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sft_rows(n: int, vocab: int, max_len: int, seed: int) -> list[dict]:
    """n rows of random tokens, varied lengths (so micro-batches pad differently), prompt masked."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        total = int(torch.randint(max_len // 2, max_len + 1, (1,), generator=g))
        plen = int(torch.randint(1, max(2, total // 4), (1,), generator=g))
        ids = torch.randint(0, vocab, (total,), generator=g).tolist()
        rows.append({"input_ids": ids, "loss_mask": [0] * plen + [1] * (total - plen)})
    return rows


def one_batch(rows: list[dict]) -> dict:
    from tunefleet.data.batching import BATCHERS

    return BATCHERS["single"].collate(rows, 0)


def sft_step(ctx, micro_rows: list[list[dict]]) -> dict:
    """One train_step over micro-batches (lists of rows); counts are over the whole step."""
    from tunefleet.train.step import count_targets, train_step

    every = [r for rows in micro_rows for r in rows]
    return train_step(ctx, [one_batch(rows) for rows in micro_rows], count_targets(one_batch(every)), len(every))


def trainable_weights(ctx) -> dict[str, torch.Tensor]:
    from tunefleet.train.state import gather_trainable

    return gather_trainable(ctx.policy)


def max_weight_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# checks: each returns (passed, numbers)


def check_sharding(models, device, args):
    """a. The same 3 SFT steps, unsharded vs FSDP2-sharded: equal losses and weights."""
    out, ok = {}, True
    seq = args.check_seq
    for name, model_dir in models.items():
        vocab = model_vocab(model_dir)
        batches = [sft_rows(4, vocab, seq, seed=10 + i) for i in range(3)]
        for prec, bf16, tol in (("fp32", False, 1e-4), ("bf16", True, 2e-2)):
            side = {}
            for kind, sh in (("unsharded", False), ("fsdp2", True)):
                ctx = make_ctx(model_dir, device, shard_it=sh, bf16=bf16)
                ms = [sft_step(ctx, [rows]) for rows in batches]
                side[kind] = {"losses": [m["loss"] for m in ms], "grad_norms": [m["grad_norm"] for m in ms],
                              "weights": trainable_weights(ctx), "bf16_ran": ctx.bf16}
                del ctx
                release()
            u, s = side["unsharded"], side["fsdp2"]
            loss_diff = max(abs(x - y) for x, y in zip(u["losses"], s["losses"]))
            w_diff = max_weight_diff(u["weights"], s["weights"])
            passed = loss_diff < tol
            ok &= passed
            out[f"{name}_{prec}"] = {"unsharded_losses": u["losses"], "fsdp2_losses": s["losses"],
                                     "unsharded_grad_norms": u["grad_norms"], "fsdp2_grad_norms": s["grad_norms"],
                                     "max_loss_diff": loss_diff, "max_weight_diff_after_3_steps": w_diff,
                                     "tolerance": tol, "bf16_autocast_ran": s["bf16_ran"], "pass": passed}
            log(f"  sharding {name} {prec}: unsharded {fmt(u['losses'])} fsdp2 {fmt(s['losses'])} "
                f"max|dloss| {loss_diff:.2e} max|dw| {w_diff:.2e} (tol {tol}) {'PASS' if passed else 'FAIL'}")
            del side
            release()
    return ok, out


def check_grad_accum(models, device, args):
    """b. One step: 1 micro-batch of 8 vs 4 micro-batches of 2 (FSDP2): same loss, grad norm, weights."""
    out, ok = {}, True
    seq = args.check_seq
    for name, model_dir in models.items():
        rows = sft_rows(8, model_vocab(model_dir), seq, seed=20)
        for prec, bf16, tol in (("fp32", False, 1e-4), ("bf16", True, 2e-2)):
            side = {}
            for kind, split in (("1x8", [rows]), ("4x2", [rows[i:i + 2] for i in range(0, 8, 2)])):
                ctx = make_ctx(model_dir, device, shard_it=True, bf16=bf16)
                m = sft_step(ctx, split)
                side[kind] = {"loss": m["loss"], "grad_norm": m["grad_norm"], "weights": trainable_weights(ctx)}
                del ctx
                release()
            a, b = side["1x8"], side["4x2"]
            loss_rel = abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-12)
            gn_rel = abs(a["grad_norm"] - b["grad_norm"]) / max(abs(a["grad_norm"]), 1e-12)
            w_diff = max_weight_diff(a["weights"], b["weights"])
            passed = loss_rel < tol and gn_rel < tol
            ok &= passed
            out[f"{name}_{prec}"] = {"loss_1x8": a["loss"], "loss_4x2": b["loss"], "grad_norm_1x8": a["grad_norm"],
                                     "grad_norm_4x2": b["grad_norm"], "loss_rel_diff": loss_rel,
                                     "grad_norm_rel_diff": gn_rel, "max_weight_diff": w_diff, "tolerance_rel": tol,
                                     "pass": passed}
            log(f"  grad-accum {name} {prec}: loss {a['loss']:.6f} vs {b['loss']:.6f} (rel {loss_rel:.1e}), "
                f"grad_norm {a['grad_norm']:.6f} vs {b['grad_norm']:.6f} (rel {gn_rel:.1e}), max|dw| {w_diff:.1e} "
                f"{'PASS' if passed else 'FAIL'}")
            del side
            release()
    return ok, out


def check_lora(models, device, args):
    """c. LoRA r16/alpha32 all-linear + FSDP2, bf16: loss falls over 20 steps on one batch;
    gather_trainable returns full, plain CPU tensors equal to the sharded parameters' full values."""
    from torch.distributed.tensor import DTensor

    from tunefleet.config import LoraConfig

    name = "tiny" if args.smoke else "smol"
    model_dir = models[name]
    steps = 5 if args.smoke else 20
    lora = LoraConfig(r=16, alpha=32, target_modules="all-linear")
    ctx = make_ctx(model_dir, device, shard_it=True, lora=lora, bf16=True, lr=2e-3)
    rows = sft_rows(8, model_vocab(model_dir), args.check_seq, seed=30)
    t0 = time.perf_counter()
    losses = [sft_step(ctx, [rows])["loss"] for _ in range(steps)]
    sync()
    elapsed = time.perf_counter() - t0
    params = dict(ctx.policy.module.named_parameters())
    n_dtensor = sum(isinstance(p, DTensor) for p in params.values())
    weights = trainable_weights(ctx)
    names = ctx.policy.trainable_names()
    problems = []
    if set(weights) != names:
        problems.append(f"keys differ from trainable names: {sorted(set(weights) ^ names)[:4]}")
    for k, v in weights.items():
        p = params[k]
        full = p.full_tensor() if isinstance(p, DTensor) else p
        if isinstance(v, DTensor) or v.device.type != "cpu" or tuple(v.shape) != tuple(p.shape):
            problems.append(f"{k}: {type(v).__name__} on {v.device} shape {tuple(v.shape)} vs {tuple(p.shape)}")
        elif not torch.equal(v, full.detach().cpu()):
            problems.append(f"{k}: differs from the parameter's full value")
    lora_keys = [k for k in weights if "lora_" in k]
    decreased = losses[-1] < losses[0] - 0.05
    ok = decreased and not problems and len(lora_keys) == len(weights) and n_dtensor > 0
    numbers = {"model": name, "losses": losses, "first_loss": losses[0], "last_loss": losses[-1],
               "steps": steps, "seconds": elapsed, "trainable_tensors": len(weights), "lora_tensors": len(lora_keys),
               "trainable_params": sum(v.numel() for v in weights.values()),
               "dtensor_params_in_module": n_dtensor, "gather_problems": problems[:10],
               "bf16_autocast_ran": ctx.bf16}
    log(f"  lora {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {steps} steps; gather_trainable "
        f"{len(weights)} tensors ({numbers['trainable_params']} params), {n_dtensor} DTensor params, "
        f"problems {problems[:3]}")
    del ctx, params, weights
    release()
    return ok, numbers


def dpo_rows(n: int, vocab: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def seq(plen, rlen):
        return {"input_ids": torch.randint(0, vocab, (plen + rlen,), generator=g).tolist(),
                "loss_mask": [0] * plen + [1] * rlen}

    return [{"chosen": seq(12, 16 + i), "rejected": seq(12, 20)} for i in range(n)]


def check_dpo(models, device, args):
    """d. DPO with a live reference, FSDP2 policy: LoRA (reference = adapter disabled) and full
    fine-tuning (reference = a frozen copy): step 0 loss = ln 2, then the loss falls."""
    from tunefleet.config import LoraConfig
    from tunefleet.config.preference import DpoConfig
    from tunefleet.data.batching import BATCHERS
    from tunefleet.train.step import count_targets, train_step

    name = "tiny" if args.smoke else "smol"
    model_dir = models[name]
    rows = dpo_rows(4, model_vocab(model_dir), seed=40)
    batch = BATCHERS["pairs"].collate(rows, 0)
    steps = 4 if args.smoke else 8
    out, ok = {"model": name}, True
    for kind, lora, lr in (("lora_live_ref", LoraConfig(r=16, alpha=32), 5e-3), ("full_live_ref", None, 1e-4)):
        ctx = make_ctx(model_dir, device, shard_it=True, lora=lora, algo=DpoConfig(beta=0.1), bf16=True, lr=lr,
                       live_ref=True)
        ms = [train_step(ctx, [batch], count_targets(batch), len(rows)) for _ in range(steps)]
        losses = [m["loss"] for m in ms]
        ln2_err = abs(losses[0] - math.log(2))
        passed = ln2_err < 1e-3 and losses[-1] < losses[0] - 0.01 and ms[-1]["rewards/margin"] > 0
        ok &= passed
        out[kind] = {"losses": losses, "step0_minus_ln2": losses[0] - math.log(2),
                     "final_margin": ms[-1]["rewards/margin"], "final_accuracy": ms[-1]["accuracy"], "pass": passed}
        log(f"  dpo {kind} {name}: loss {fmt(losses)} (step0 - ln2 = {losses[0] - math.log(2):+.1e}), "
            f"margin {ms[-1]['rewards/margin']:.4f} {'PASS' if passed else 'FAIL'}")
        del ctx, ms
        release()
    return ok, out


def check_collectives(models, device, args):
    """f. tunefleet.train.collectives on the training group. world=1 takes the documented
    shortcut (no torch.distributed call); world=2 passed on this 1-rank group forces the real
    dist.all_reduce / broadcast_object_list on collective_device() (cuda under NCCL)."""
    from tunefleet.train.collectives import all_gather_object, all_reduce_sum, broadcast_object, collective_device

    values = [1.5, 2.25, 1e10 + 3.0]
    obj = {"step": 7, "names": ["a", "b"], "t": 0.5}
    cdev = collective_device()
    short = all_reduce_sum(values, 1)
    real = all_reduce_sum(values, 2)  # one rank: the sum is the values themselves
    bcast = broadcast_object(obj, 0, 2)
    gathered = all_gather_object(obj, 1)
    t = torch.arange(1 << 20, dtype=torch.float32, device=device)
    dist.all_reduce(t)
    sync()
    expected_dev = "cuda" if device.type == "cuda" else "cpu"
    ok = (short == values and real == values and bcast == obj and gathered == [obj] and cdev.type == expected_dev
          and float(t[-1]) == float((1 << 20) - 1))
    numbers = {"backend": str(dist.get_backend()), "collective_device": str(cdev), "all_reduce_sum": real,
               "broadcast_object": bcast, "raw_all_reduce_1M_floats_on": str(t.device)}
    log(f"  collectives: backend {numbers['backend']}, collective_device {cdev}, all_reduce_sum {real}, "
        f"broadcast_object {bcast}")
    return ok, numbers


def _timed(step_fn, warmup: int, steps: int) -> list[float]:
    times = []
    for _ in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        step_fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def _throughput_side(kind: str, model_dir: Path, device: torch.device, b: int, seq: int, args, ids, n_params: int):
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if kind == "plain":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation="sdpa").to(device)
        model.config.use_cache = False
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        use_bf16 = device.type == "cuda"  # the same autocast as ours (autocast_bf16(True, "cuda"))

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

    else:
        from tunefleet.train.step import count_targets, train_step

        ctx = make_ctx(model_dir, device, shard_it=kind == "ours_fsdp2", bf16=True, lr=1e-5)
        rows = [{"input_ids": r, "loss_mask": [1] * len(r)} for r in ids.cpu().tolist()]
        batch = one_batch(rows)
        batch["main"] = {k: v.to(device) for k, v in batch["main"].items()}
        n_targets = count_targets(batch)

        def step():
            return train_step(ctx, [batch], n_targets, b)["loss"]

    times = _timed(step, args.warmup, args.steps)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    mean = statistics.mean(times)
    tok_s = b * seq / mean
    res = {"mean_step_s": mean, "median_step_s": statistics.median(times), "min_step_s": min(times),
           "step_s": times, "tokens_per_step": b * seq, "tokens_per_s": tok_s,
           "mfu_6N": 6 * n_params * tok_s / H200_BF16_PEAK, "peak_mem_gib": peak / 2**30}
    return res


def check_throughput(models, device, args):
    """e. SFT full fine-tune, bf16 autocast, fp32 weights, one micro-batch of b x seq random tokens,
    every token a target: ours (FSDP2 world 1, and unsharded) vs plain transformers + AdamW."""
    name = "tiny" if args.smoke else "smol"
    model_dir = models[name]
    from transformers import AutoConfig, LlamaForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in LlamaForCausalLM(AutoConfig.from_pretrained(str(model_dir))).parameters())
    vocab = model_vocab(model_dir)
    out, ok = {"model": name, "n_params": n_params, "seq": args.seq, "warmup": args.warmup, "steps": args.steps,
               "mfu_peak_flops": H200_BF16_PEAK}, True
    for b in [args.micro_batch] + ([args.extra_micro_batch] if args.extra_micro_batch else []):
        g = torch.Generator().manual_seed(50)
        ids = torch.randint(0, vocab, (b, args.seq), generator=g).to(device)
        point = {}
        for kind in ("ours_fsdp2", "ours_unsharded", "plain"):
            try:
                point[kind] = _throughput_side(kind, model_dir, device, b, args.seq, args, ids, n_params)
                release()  # the side's model and optimizer went out of scope with it
                r = point[kind]
                log(f"  throughput {name} b{b}x{args.seq} {kind}: {r['tokens_per_s']:.0f} tok/s, "
                    f"step {r['mean_step_s'] * 1e3:.1f} ms, MFU(6N) {r['mfu_6N'] * 100:.1f}%, "
                    f"peak {r['peak_mem_gib']:.2f} GiB")
            except torch.cuda.OutOfMemoryError as err:  # a larger point may not fit: record, go on
                point[kind] = {"error": f"OOM: {err}"[:300]}
                log(f"  throughput {name} b{b} {kind}: OOM")
                release()
        if "tokens_per_s" in point.get("ours_fsdp2", {}) and "tokens_per_s" in point.get("plain", {}):
            point["ratio_ours_fsdp2_over_plain"] = point["ours_fsdp2"]["tokens_per_s"] / point["plain"]["tokens_per_s"]
            point["ratio_ours_unsharded_over_plain"] = (point["ours_unsharded"]["tokens_per_s"]
                                                        / point["plain"]["tokens_per_s"])
            log(f"  throughput b{b}: ours(fsdp2)/plain = {point['ratio_ours_fsdp2_over_plain']:.3f}, "
                f"ours(unsharded)/plain = {point['ratio_ours_unsharded_over_plain']:.3f}")
        elif b == args.micro_batch:
            ok = False
        out[f"b{b}"] = point
    return ok, out


CHECKS = [("a_fsdp2_sharding_equivalence", check_sharding), ("b_grad_accum_equivalence", check_grad_accum),
          ("c_lora_fsdp2", check_lora), ("d_dpo_live_reference", check_dpo), ("f_collectives", check_collectives),
          ("e_throughput", check_throughput)]


# ---------------------------------------------------------------------------------------------


def fmt(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.6f}" for x in xs) + "]"


def write_json(path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(RESULTS, indent=1, default=str))
    tmp.replace(path)


def environment(device: torch.device, backend: str) -> dict:
    import peft
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "transformers": transformers.__version__, "peft": peft.__version__, "device": str(device),
           "backend": backend, "host_cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_mem_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                   nccl=".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
                   cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available() and not args.smoke)
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    backend = init_dist(device)
    RESULTS["env"].update(environment(device, backend))
    RESULTS["args"] = vars(args)
    log(f"env: {json.dumps(RESULTS['env'], default=str)}")
    only = {s for s in args.only.split(",") if s}
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        os.environ["TUNEFLEET_HOME"] = str(Path(tmp) / "home")
        t0 = time.perf_counter()
        models = build_models(Path(tmp), args.smoke, args.smol_layers)
        log(f"built models {sorted(models)} in {time.perf_counter() - t0:.1f}s")
        for name, fn in CHECKS:
            if only and not any(name.startswith(o) or name[2:].startswith(o) for o in only):
                continue
            log(f"{name} ...")
            t0 = time.perf_counter()
            try:
                passed, numbers = fn(models, device, args)
                status = "PASS" if passed else "FAIL"
            except Exception as err:  # noqa: BLE001 - record the failure, run the other checks
                status, numbers = "FAIL", {"error": f"{type(err).__name__}: {err}",
                                           "traceback": traceback.format_exc()[-3000:]}
                traceback.print_exc()
                release()
            secs = time.perf_counter() - t0
            RESULTS["checks"][name] = {"status": status, "seconds": secs, **({"numbers": numbers})}
            if status != "PASS":
                failed.append(name)
            log(f"{name}: {status} ({secs:.1f}s)")
            write_json(json_path)
    summary(RESULTS)
    write_json(json_path)
    dist.destroy_process_group()
    return 1 if failed else 0


def summary(results: dict) -> None:
    print("\n==== gpu_check summary ====", flush=True)
    print(f"{'check':34} {'status':6} {'seconds':>8}", flush=True)
    for name, r in results["checks"].items():
        print(f"{name:34} {r['status']:6} {r['seconds']:8.1f}", flush=True)
    tp = results["checks"].get("e_throughput", {}).get("numbers", {})
    for key, point in tp.items():
        if not key.startswith("b") or not isinstance(point, dict):
            continue
        for kind in ("ours_fsdp2", "ours_unsharded", "plain"):
            r = point.get(kind, {})
            if "tokens_per_s" in r:
                print(f"  {key} x{tp['seq']} {kind:15} {r['tokens_per_s']:10.0f} tok/s  "
                      f"{r['mean_step_s'] * 1e3:8.1f} ms  MFU(6N) {r['mfu_6N'] * 100:5.1f}%  "
                      f"peak {r['peak_mem_gib']:6.2f} GiB", flush=True)
        if "ratio_ours_fsdp2_over_plain" in point:
            print(f"  {key} ours(fsdp2)/plain {point['ratio_ours_fsdp2_over_plain']:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
