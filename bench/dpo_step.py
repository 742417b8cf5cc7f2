"""Time per DPO optimizer step: tunefleet's training step vs TRL's DPOTrainer, in one run.

Same model (SmolLM2-135M-Instruct), LoRA r16 all-linear (or --full), the same 8 pairs per
step in the same order, the same lengths (pairs that fit in --max-length untruncated, so
neither side truncates), bf16 autocast (or --fp32), AdamW at a constant LR, clip 1.0, and
reference log-probs precomputed before training on both sides (excluded from the timing),
or --live-ref (TRL: adapter-disabled reference each step; tunefleet: the same). Each side
runs in its own subprocess with the same thread count.

    .venv/bin/python bench/dpo_step.py --json /tmp/dpo_step.json
    .venv/bin/python bench/dpo_step.py --model tiny-llama --steps 2      # smoke test
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_side  # noqa: E402

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl.gz"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--fp32", action="store_true", help="fp32 instead of bf16 autocast")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r16")
    p.add_argument("--live-ref", action="store_true", help="reference each step instead of precomputed")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--side", choices=("tunefleet", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _pairs(args, tok):
    """(examples, tokenized pairs) of the first pairs that fit max_length untruncated."""
    from tunefleet.data.prepare import task_preference_rows
    from tunefleet.data.preference import preference_row_problem, to_preference_example, tokenize_pair

    need = (args.warmup + args.steps) * args.batch
    if HH.is_file():
        raw = (json.loads(line) for line in gzip.open(HH, "rt"))
    else:
        print(f"note: {HH} absent; using built-in arith pairs")
        cfg = type("D", (), {"task": "arith", "level": 2, "num_train": 4 * need, "num_eval": 0, "seed": 0})()
        raw = iter(task_preference_rows(cfg, "pairs")[0])
    examples, pairs = [], []
    for row in raw:
        if preference_row_problem(row):
            continue
        ex = to_preference_example(row)
        full = tokenize_pair(tok, ex, 10**9)
        if max(len(full["chosen"]["input_ids"]), len(full["rejected"]["input_ids"])) <= args.max_length:
            examples.append(ex)
            pairs.append(full)
        if len(pairs) == need:
            return examples, pairs
    raise SystemExit(f"only {len(pairs)} pairs fit in {args.max_length} tokens, need {need}")


def run_tunefleet(args) -> dict:
    import torch

    from tunefleet.algorithms import get_loss
    from tunefleet.config import LoraConfig
    from tunefleet.config.preference import DpoConfig
    from tunefleet.data.batching import BATCHERS
    from tunefleet.models.policy import build_policy
    from tunefleet.models.registry import load_tokenizer, resolve_model
    from tunefleet.train.reference import live_reference, sequence_logps
    from tunefleet.train.step import StepContext, count_targets, train_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = str(resolve_model(args.model))
    tok = load_tokenizer(model_dir)
    _, pairs = _pairs(args, tok)
    bf16, device = not args.fp32, torch.device("cpu")
    if not args.live_ref:
        seqs = [s for p in pairs for s in (p["chosen"], p["rejected"])]
        for seq, v in zip(seqs, sequence_logps(model_dir, seqs, tok.pad_token_id, "float32", 8, bf16)):
            seq["ref_seq_logps"] = v
    policy = build_policy(model_dir, "float32", None if args.full else LoraConfig(), device, 1)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctx = StepContext(policy, opt, sched, get_loss("dpo"), DpoConfig(beta=args.beta), device, 1, 1.0, bf16)
    if args.live_ref:
        ctx.reference = live_reference(model_dir, policy, device, 1, "float32", bf16)
    b = args.batch
    batches = [BATCHERS["pairs"].collate(pairs[i * b:(i + 1) * b], tok.pad_token_id)
               for i in range(args.warmup + args.steps)]
    times, losses = [], []
    for batch in batches:
        t0 = time.perf_counter()
        m = train_step(ctx, [batch], count_targets(batch), b)
        times.append(time.perf_counter() - t0)
        losses.append(m["loss"])
    return {"times": times, "losses": losses}


def run_trl(args) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tunefleet.models.registry import load_model, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = resolve_model(args.model)
    tok = load_tokenizer(model_dir)
    examples, _ = _pairs(args, tok)
    data = Dataset.from_list([{"prompt": list(ex.prompt), "chosen": [{"role": "assistant", "content": ex.chosen}],
                               "rejected": [{"role": "assistant", "content": ex.rejected}]} for ex in examples])
    model = load_model(model_dir, dtype="float32")
    peft_config = None
    if not args.full:
        from peft import LoraConfig as PeftLoraConfig

        peft_config = PeftLoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM")

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    class LossDPO(DPOTrainer):
        losses: list[float] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.losses.append(float(loss))
            return loss

    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="trl-dpo-bench-") as out:
        cfg = DPOConfig(output_dir=out, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
                        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant",
                        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
                        bf16=not args.fp32, gradient_checkpointing=False, max_length=args.max_length,
                        precompute_ref_log_probs=not args.live_ref, beta=args.beta, report_to=[],
                        save_strategy="no", logging_steps=10**6, dataloader_num_workers=0, use_cpu=True, seed=0,
                        disable_tqdm=True, train_sampling_strategy="sequential")
        trainer = LossDPO(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=peft_config,
                          callbacks=[timer])
        trainer.train()
    return {"times": timer.times, "losses": LossDPO.losses}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side:
        res = run_tunefleet(args) if args.side == "tunefleet" else run_trl(args)
        args.result.write_text(json.dumps(res))
        return 0
    base = [str(Path(__file__).resolve())] + [a for a in (argv or sys.argv[1:]) if not a.startswith("--json")]
    results = {}
    for side in ("tunefleet", "trl"):
        print(f"--- running {side} ...", flush=True)
        results[side] = run_side(base + ["--side", side], args.threads)
    w = args.warmup
    mean = {s: statistics.mean(r["times"][w:]) for s, r in results.items()}
    setting = (f"model={args.model} pairs/step={args.batch} max_length={args.max_length} "
               f"{'fp32' if args.fp32 else 'bf16'} {'full' if args.full else 'LoRA r16'} "
               f"reference={'live' if args.live_ref else 'precomputed'} threads={args.threads}")
    print(f"\n{setting}\n{'':24}{'tunefleet':>12}{'trl':>12}")
    print(f"{'mean step s (timed)':24}{mean['tunefleet']:12.3f}{mean['trl']:12.3f}")
    print(f"{'pairs/s':24}{args.batch / mean['tunefleet']:12.2f}{args.batch / mean['trl']:12.2f}")
    first = {s: r["losses"][0] for s, r in results.items()}
    print(f"{'first-step loss':24}{first['tunefleet']:12.4f}{first['trl']:12.4f}   (ln 2 = {math.log(2):.4f})")
    if abs(first["tunefleet"] - first["trl"]) > 0.05 * abs(first["trl"]):
        print("WARNING: first-step losses differ by more than 5%")
    ratio = mean["trl"] / mean["tunefleet"]
    print(f"RATIO trl/tunefleet step time = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "results": results, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
