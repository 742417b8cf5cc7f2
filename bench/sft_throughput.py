"""SFT training throughput: tunefleet's training step vs TRL's SFTTrainer, in one run.

Both sides train the same model on the same chat SFT examples (response tokens only), with
the same sequence length, batch size, precision, optimizer (AdamW, constant LR, clip 1.0)
and number of steps, each in its own subprocess with the same thread count. Throughput is
real (non-padding) tokens per second over the steps after `--warmup`; the FLOP limit is
6*N FLOPs per token at the 2048x2048 matmul peak measured at the start of the same run.

    .venv/bin/python bench/sft_throughput.py                        # smollm2, gsm8k, fp32
    .venv/bin/python bench/sft_throughput.py --model tiny-llama --steps 3 --data arith
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GSM8K_PATH,
    flop_limit_tokens_per_s,
    matmul_gflops,
    run_side,
    sft_examples,
    trl_row,
)

LOSS_TOLERANCE = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or HF directory")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps (after warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (one micro-batch)")
    p.add_argument("--max-length", type=int, default=256)
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--bf16", dest="bf16", action="store_true", help="bf16 autocast on both sides")
    prec.add_argument("--fp32", dest="bf16", action="store_false", help="fp32 (default)")
    p.set_defaults(bf16=False)
    p.add_argument("--lora", action="store_true", help="LoRA r16 alpha32 all-linear on both sides")
    p.add_argument("--packing", action="store_true", help="tunefleet packs rows (TRL still pads)")
    p.add_argument("--trl-packing", action="store_true", help="let TRL pack too (its bfd packing)")
    p.add_argument("--data", choices=("arith", "gsm8k"), default=None,
                   help=f"default: gsm8k if {GSM8K_PATH} exists, else arith")
    p.add_argument("--gsm8k-path", type=Path, default=GSM8K_PATH)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--side", choices=("tunefleet", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _summary(args, step_times: list[float], tokens: list[int], targets: list[int],
             padded: list[int], losses: list[float], n_params: int, trainable: int) -> dict:
    """Per-side result; only steps after the warmup count towards throughput."""
    w = args.warmup
    timed_s = sum(step_times[w:])
    return {
        "tokens_per_s": sum(tokens[w:]) / timed_s, "timed_s": timed_s,
        "step_s": step_times, "real_tokens": tokens, "target_tokens": targets,
        "padded_tokens": padded, "losses": losses, "first_loss": losses[0],
        "n_params": n_params, "trainable_params": trainable,
    }


def _examples(args, tok, packing: bool):
    """(examples, tokenized): one per sequence of the run, or, when this side packs, enough
    to fill (warmup+steps)*batch packed rows of max_length, with some slack."""
    need = (args.warmup + args.steps) * args.batch
    examples, rows = sft_examples(tok, args.data, need, args.max_length, args.gsm8k_path)
    if packing:
        mean = sum(len(r["input_ids"]) for r in rows) / len(rows)
        pool = math.ceil(need * args.max_length / mean * 1.2) + args.batch
        examples, rows = sft_examples(tok, args.data, pool, args.max_length, args.gsm8k_path)
    return examples, rows


def _collate_for_step(rows: list[dict], pad_id: int) -> dict:
    """A micro-batch in the layout train_step expects: the SFT algorithm's batcher where the
    platform has batchers (data/batching.py), else the plain collated tensors."""
    try:
        from tunefleet.config.schema import SftConfig
        from tunefleet.data.batching import BATCHERS
    except ImportError:
        from tunefleet.data import collate

        return collate(rows, pad_id)
    return BATCHERS[getattr(SftConfig, "BATCH", "single")].collate(rows, pad_id)


def run_tunefleet(args) -> dict:
    """In-process tunefleet training steps, set up as platform/tunefleet/train/loop.py does."""
    import torch

    from tunefleet.algorithms import get_loss
    from tunefleet.config import LoraConfig
    from tunefleet.config.schema import SftConfig
    from tunefleet.data import pack_examples
    from tunefleet.models.policy import build_policy
    from tunefleet.models.registry import load_tokenizer, resolve_model
    from tunefleet.train.step import StepContext, count_targets, train_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = resolve_model(args.model)
    tok = load_tokenizer(model_dir)
    total, b = args.warmup + args.steps, args.batch
    _, rows = _examples(args, tok, args.packing)
    if args.packing:
        rows = pack_examples(rows, args.max_length)[: total * b]
        if len(rows) < total * b:
            raise SystemExit(f"packing gave {len(rows)} rows, need {total * b}")
    # Collated up front, like TRL's trainer fetches each batch before its on_step_begin.
    batches = [_collate_for_step(rows[i * b:(i + 1) * b], tok.pad_token_id) for i in range(total)]
    device = torch.device("cpu")
    policy = build_policy(str(model_dir), "float32", LoraConfig() if args.lora else None, device, 1)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ctx = StepContext(policy, optimizer, scheduler, get_loss("sft"), SftConfig(), device, 1,
                      1.0, args.bf16)
    times, tokens, targets, padded, losses = [], [], [], [], []
    for mb in batches:
        n_targets = count_targets(mb)
        start = time.perf_counter()
        metrics = train_step(ctx, [mb], n_targets, b)
        times.append(time.perf_counter() - start)
        tokens.append(int(metrics["real_tokens"]))
        targets.append(n_targets)
        padded.append(mb.get("main", mb)["input_ids"].numel())
        losses.append(metrics["loss"])
    n_params = sum(p.numel() for p in policy.module.parameters())
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    return _summary(args, times, tokens, targets, padded, losses, n_params, trainable)


def run_trl(args) -> dict:
    """TRL SFTTrainer on the same examples (in the same order), timed by a callback."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunefleet.models.registry import load_model, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = resolve_model(args.model)
    tok = load_tokenizer(model_dir)
    total, b = args.warmup + args.steps, args.batch
    examples, _ = _examples(args, tok, args.trl_packing)
    dataset = Dataset.from_list([trl_row(ex) for ex in examples])
    model = load_model(model_dir, dtype="float32")
    model.config.use_cache = False
    peft_config = None
    if args.lora:
        from peft import LoraConfig as PeftLoraConfig

        peft_config = PeftLoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                     target_modules="all-linear", task_type="CAUSAL_LM")

    class Timer(TrainerCallback):
        """Wall time of each optimizer step; data fetching happens before on_step_begin."""

        def __init__(self):
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    class CountingSFTTrainer(SFTTrainer):
        """Records the real tokens, targets and loss of every batch it trains on."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.seen: list[tuple[int, int, int, float]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            ids = inputs["input_ids"]
            # Without an attention mask (padding-free packing) every position is real.
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else ids.numel()
            targets = int((inputs["labels"][:, 1:] != -100).sum())  # HF shifts labels by one
            self.seen.append((real, targets, ids.numel(), float(loss)))
            return loss

    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out_dir:
        config = SFTConfig(
            output_dir=out_dir, max_steps=total, per_device_train_batch_size=b,
            gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            bf16=args.bf16, fp16=False,
            gradient_checkpointing=False,  # SFTConfig defaults to True; tunefleet does not recompute
            max_length=args.max_length, packing=args.trl_packing, completion_only_loss=True,
            report_to=[], save_strategy="no", logging_steps=10**6, dataloader_num_workers=0,
            train_sampling_strategy="sequential",  # same order as tunefleet's batches
            use_cpu=True, seed=0, disable_tqdm=True,
        )
        timer = Timer()
        trainer = CountingSFTTrainer(model=model, args=config, train_dataset=dataset,
                                     processing_class=tok, peft_config=peft_config, callbacks=[timer])
        trainer.train()
    seen = trainer.seen
    if len(seen) != total or len(timer.times) != total:
        raise SystemExit(f"TRL ran {len(timer.times)} steps / {len(seen)} batches, expected {total}")
    module = trainer.model
    n_params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return _summary(args, timer.times, [s[0] for s in seen], [s[1] for s in seen],
                    [s[2] for s in seen], [s[3] for s in seen], n_params, trainable)


def _report(args, res: dict, peaks: dict) -> dict:
    """Print the comparison table and return the combined results."""
    tf, trl = res["tunefleet"], res["trl"]
    peak_key = "bf16" if args.bf16 else "fp32"
    limit = {s: flop_limit_tokens_per_s(r["n_params"], peaks[peak_key]) for s, r in res.items()}
    w = args.warmup

    def pad_frac(r):
        return 1 - sum(r["real_tokens"][w:]) / sum(r["padded_tokens"][w:])

    rows = [
        ("real tokens/s", lambda s, r: f"{r['tokens_per_s']:.1f}"),
        ("FLOP-limit tokens/s", lambda s, r: f"{limit[s]:.1f}"),
        ("fraction of FLOP limit", lambda s, r: f"{r['tokens_per_s'] / limit[s]:.1%}"),
        ("mean step s (timed)", lambda s, r: f"{r['timed_s'] / args.steps:.3f}"),
        ("real tokens (timed)", lambda s, r: f"{sum(r['real_tokens'][w:])}"),
        ("loss tokens (timed)", lambda s, r: f"{sum(r['target_tokens'][w:])}"),
        ("padding fraction", lambda s, r: f"{pad_frac(r):.1%}"),
        ("first-step loss", lambda s, r: f"{r['first_loss']:.4f}"),
        ("params in forward (N)", lambda s, r: f"{r['n_params']:,}"),
        ("trainable params", lambda s, r: f"{r['trainable_params']:,}"),
    ]
    print(f"\nmodel={args.model} data={args.data} batch={args.batch} max_length={args.max_length} "
          f"precision={peak_key} lora={args.lora} packing(tunefleet)={args.packing} "
          f"packing(trl)={args.trl_packing} steps={args.steps}+{w} warmup threads={args.threads}")
    print(f"matmul peak 2048^2: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    print(f"{'':26}{'tunefleet':>14}{'trl':>14}")
    for name, fmt in rows:
        print(f"{name:26}{fmt('tunefleet', tf):>14}{fmt('trl', trl):>14}")
    ratio = tf["tokens_per_s"] / trl["tokens_per_s"]
    print(f"RATIO tunefleet/trl real tokens/s = {ratio:.2f}")
    rel = abs(tf["first_loss"] - trl["first_loss"]) / max(abs(trl["first_loss"]), 1e-12)
    if args.packing or args.trl_packing:
        print("first-step losses not compared: packing changes what the first batch holds")
    elif rel > LOSS_TOLERANCE:
        print(f"WARNING: first-step losses differ by {rel:.1%} (> {LOSS_TOLERANCE:.0%}): "
              "the two sides may not be training on the same thing")
    else:
        print(f"first-step losses agree within {rel:.1%}")
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "matmul_gflops": peaks, "flop_limit_tokens_per_s": limit, "ratio": ratio,
            "first_loss_rel_diff": rel, **res}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:  # a measured subprocess
        result = (run_tunefleet if args.side == "tunefleet" else run_trl)(args)
        args.result.write_text(json.dumps(result))
        return 0
    if args.data is None:
        args.data = "gsm8k" if args.gsm8k_path.is_file() else "arith"
        if args.data == "arith":
            print(f"note: {args.gsm8k_path} not found; using the built-in arith task")
    elif args.data == "gsm8k" and not args.gsm8k_path.is_file():
        print(f"SKIP: --data gsm8k needs {args.gsm8k_path}, which does not exist")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    # Measured first, while nothing else of ours is running.
    peaks = {k: matmul_gflops(k) for k in ("fp32", "bf16")}
    base = [str(Path(__file__).resolve()), "--data", args.data]
    passthrough = list(argv if argv is not None else sys.argv[1:])
    res = {}
    for side in ("tunefleet", "trl"):  # sequential: the two must not share the cores
        print(f"--- running {side} ...", flush=True)
        res[side] = run_side(base + passthrough + ["--side", side], args.threads)
    out = _report(args, res, peaks)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
