"""DPO optimizer-step time: tunefleet's training step vs TRL's DPOTrainer, in one run.

Both sides train the same model (LoRA r16 alpha 32 all-linear, or --full) with the DPO
sigmoid loss (beta 0.1) on the same preference pairs in the same order, `--batch` pairs per
optimizer step (one micro-batch), the same max length (pairs chosen so that neither side
truncates: prompt <= --max-prompt-length, each sequence <= --max-length), bf16 autocast
(or --fp32) over fp32 weights, AdamW at a constant LR with clip 1.0, and reference
log-probs precomputed before training (outside the timing), or --live-ref (adapter
disabled / frozen copy, every step). Each side runs in its own subprocess, one after the
other, with the same thread count. The time per step is the mean over the steps after
`--warmup`.

    .venv/bin/python bench/dpo_step.py --json /tmp/dpo_step.json    # smollm2, hh-rlhf, LoRA, bf16
    .venv/bin/python bench/dpo_step.py --model tiny-llama --steps 2  # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HH_HARMLESS_PATH, matmul_gflops, preference_pairs, run_side  # noqa: E402

LOSS_TOLERANCE = 0.05
# TRL's tokenization keeps ChatML's "\n" after the final <|im_end|> as a completion token;
# tunefleet trims it. Pairs are chosen with this much room so TRL never truncates either.
TRL_EXTRA_TOKENS = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or HF directory")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps (after warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--batch", type=int, default=8, help="preference pairs per step (one micro-batch)")
    p.add_argument("--max-length", type=int, default=256, help="max tokens of prompt + response")
    p.add_argument("--max-prompt-length", type=int, default=128, help="max prompt tokens")
    p.add_argument("--fp32", action="store_true", help="fp32 instead of bf16 autocast (both sides)")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r16 all-linear")
    p.add_argument("--live-ref", action="store_true",
                   help="reference log-probs every step (LoRA: adapter disabled; --full: a frozen copy) "
                        "instead of precomputed")
    p.add_argument("--trl-tokens", action="store_true",
                   help="let TRL train on its own tokenization (one more completion token per sequence: "
                        "the newline after <|im_end|>) instead of exactly tunefleet's tokens")
    p.add_argument("--data", choices=("hh", "arith"), default=None,
                   help=f"default: hh-rlhf harmless if {HH_HARMLESS_PATH} exists, else the built-in arith pairs")
    p.add_argument("--hh-path", type=Path, default=HH_HARMLESS_PATH)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--side", choices=("tunefleet", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _pairs(args, tok):
    """(examples, tokenized pairs): the first (warmup+steps)*batch pairs that fit untruncated."""
    need = (args.warmup + args.steps) * args.batch
    return preference_pairs(tok, args.data, need, args.max_length, args.max_prompt_length,
                            spare=TRL_EXTRA_TOKENS, hh_path=args.hh_path)


def _summary(args, times: list[float], losses: list[float], real: list[int], targets: list[int],
             padded: list[int], trainable: int, n_params: int) -> dict:
    w = args.warmup
    timed = times[w:]
    return {"step_s": times, "mean_step_s": statistics.mean(timed), "min_step_s": min(timed),
            "max_step_s": max(timed), "losses": losses, "first_loss": losses[0], "real_tokens": real,
            "target_tokens": targets, "padded_tokens": padded, "trainable_params": trainable,
            "n_params": n_params}


def run_tunefleet(args) -> dict:
    """In-process tunefleet DPO steps, set up as platform/tunefleet/train/loop.py `_setup` does."""
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
    bf16, device, b = not args.fp32, torch.device("cpu"), args.batch
    total = args.warmup + args.steps
    step_rows = [pairs[i * b:(i + 1) * b] for i in range(total)]
    if not args.live_ref:
        # reference.mode=precompute: rows carry ref_seq_logps. Scored in the training layout
        # (each step's chosen then rejected, 2b per forward: TRL's precompute batch), with the
        # same autocast as training, so that at step 1 policy == reference exactly. Untimed.
        seqs = [r[k] for rows in step_rows for k in ("chosen", "rejected") for r in rows]
        t0 = time.perf_counter()
        values = sequence_logps(model_dir, seqs, tok.pad_token_id, "float32", 2 * b, bf16)
        print(f"[tunefleet] reference precompute: {time.perf_counter() - t0:.1f}s (not timed)", flush=True)
        for seq, value in zip(seqs, values):
            seq["ref_seq_logps"] = value
    # Collated up front, like TRL's trainer fetches each batch before its on_step_begin.
    batches = [BATCHERS[DpoConfig.BATCH].collate(rows, tok.pad_token_id) for rows in step_rows]
    lora = None if args.full else LoraConfig(r=16, alpha=32)
    torch.manual_seed(0)  # seed -> load -> LoRA init, in the same order as on the TRL side
    policy = build_policy(model_dir, "float32", lora, device, 1)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    reference = live_reference(model_dir, policy, device, 1, "float32", bf16) if args.live_ref else None
    ctx = StepContext(policy, optimizer, scheduler, get_loss("dpo"), DpoConfig(beta=args.beta), device, 1,
                      1.0, bf16, reference)
    times, losses, real, targets, padded = [], [], [], [], []
    for rows, batch in zip(step_rows, batches):
        n_targets = count_targets(batch)
        start = time.perf_counter()
        metrics = train_step(ctx, [batch], n_targets, len(rows))
        times.append(time.perf_counter() - start)
        losses.append(metrics["loss"])
        real.append(int(metrics["real_tokens"]))
        targets.append(n_targets)
        padded.append(batch["main"]["input_ids"].numel())
    n_params = sum(p.numel() for p in policy.module.parameters())
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    return _summary(args, times, losses, real, targets, padded, trainable, n_params)


def _trim_after_eos(ids: list[int], eos_id: int) -> list[int]:
    """Drop what follows the last end-of-turn token (ChatML's newline), as tunefleet does."""
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] == eos_id:
            return ids[: i + 1]
    return ids


def run_trl(args) -> dict:
    """TRL DPOTrainer on the same pairs (in the same order), timed by a callback."""
    import tempfile
    from dataclasses import dataclass

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from tunefleet.models.registry import load_model, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = resolve_model(args.model)
    tok = load_tokenizer(model_dir)
    examples, pairs = _pairs(args, tok)
    total, b = args.warmup + args.steps, args.batch
    dataset = Dataset.from_list([
        {"prompt": [dict(m) for m in ex.prompt],
         "chosen": [{"role": "assistant", "content": ex.chosen}],
         "rejected": [{"role": "assistant", "content": ex.rejected}]}
        for ex in examples
    ])
    torch.manual_seed(0)  # seed -> load -> LoRA init (in DPOTrainer), as on the tunefleet side
    model = load_model(model_dir, dtype="float32")
    model.config.use_cache = False
    model.config.pad_token_id = tok.pad_token_id  # what DPOTrainer does when it builds its collator
    peft_config = None
    if not args.full:
        from peft import LoraConfig as PeftLoraConfig

        peft_config = PeftLoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM")
    trim = not args.trl_tokens
    eos_id = tok.eos_token_id

    @dataclass
    class SameTokensCollator(DataCollatorForPreference):
        """TRL's own collator, on completions cut after the final end-of-turn (tunefleet's
        tokens exactly) unless --trl-tokens. Also used by TRL's reference precompute."""

        def torch_call(self, rows):
            if trim:
                rows = [{**r, "chosen_ids": _trim_after_eos(r["chosen_ids"], eos_id),
                         "rejected_ids": _trim_after_eos(r["rejected_ids"], eos_id)} for r in rows]
            return super().torch_call(rows)

    class Timer(TrainerCallback):
        """Wall time of each optimizer step; the batch is fetched before on_step_begin."""

        def __init__(self):
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    class CountingDPOTrainer(DPOTrainer):
        """Records the loss and token counts of every batch it trains on."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.seen: list[tuple[float, int, int, int]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.seen.append((float(loss), int(inputs["attention_mask"].sum()),
                              int(inputs["completion_mask"].sum()), inputs["input_ids"].numel()))
            return loss

    collator = SameTokensCollator(pad_token_id=tok.pad_token_id, max_length=args.max_length,
                                  truncation_mode="keep_start", pad_to_multiple_of=None)
    with tempfile.TemporaryDirectory(prefix="trl-dpo-bench-") as out_dir:
        config = DPOConfig(
            output_dir=out_dir, max_steps=total, per_device_train_batch_size=b,
            gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            bf16=not args.fp32, fp16=False,
            gradient_checkpointing=False,  # DPOConfig defaults to True; tunefleet does not recompute
            max_length=args.max_length, truncation_mode="keep_start",  # the only mode TRL 1.16 supports
            precompute_ref_log_probs=not args.live_ref, precompute_ref_batch_size=b,
            loss_type=["sigmoid"], beta=args.beta,
            report_to=[], save_strategy="no", logging_steps=10**6, dataloader_num_workers=0,
            dataloader_pin_memory=False,
            train_sampling_strategy="sequential",  # same order as tunefleet's batches
            use_cpu=True, seed=0, disable_tqdm=True,
        )
        timer = Timer()
        t0 = time.perf_counter()
        trainer = CountingDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                                     data_collator=collator, peft_config=peft_config, callbacks=[timer])
        print(f"[trl] trainer set-up{'' if args.live_ref else ' incl. reference precompute'}: "
              f"{time.perf_counter() - t0:.1f}s (not timed)", flush=True)
        _check_same_tokens(trainer.train_dataset, pairs, eos_id, trim)
        trainer.train()
    seen = trainer.seen
    if len(seen) != total or len(timer.times) != total:
        raise SystemExit(f"TRL ran {len(timer.times)} steps / {len(seen)} batches, expected {total}")
    module = trainer.model
    n_params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return _summary(args, timer.times, [s[0] for s in seen], [s[1] for s in seen], [s[2] for s in seen],
                    [s[3] for s in seen], trainable, n_params)


def _check_same_tokens(dataset, pairs: list[dict], eos_id: int, trimmed: bool) -> None:
    """TRL's tokenized rows must be tunefleet's sequences (with --trl-tokens: plus what
    follows the final end-of-turn), in the same order, with the same prompt/response split."""
    if len(dataset) != len(pairs):
        raise SystemExit(f"TRL kept {len(dataset)} of {len(pairs)} pairs")
    for i, (row, pair) in enumerate(zip(dataset, pairs)):
        for key in ("chosen", "rejected"):
            completion = row[f"{key}_ids"]
            if trimmed:
                completion = _trim_after_eos(completion, eos_id)
            ids = row["prompt_ids"] + completion
            mask = [0] * len(row["prompt_ids"]) + [1] * len(completion)
            want = pair[key]
            if trimmed and (ids, mask) != (want["input_ids"], want["loss_mask"]):
                raise SystemExit(f"pair {i} {key}: TRL's tokens differ from tunefleet's")
            if not trimmed and ids[: len(want["input_ids"])] != want["input_ids"]:
                raise SystemExit(f"pair {i} {key}: TRL's tokens do not extend tunefleet's")


def _report(args, res: dict, peaks: dict, load: dict) -> dict:
    """Print the comparison table and return the combined results."""
    tf, trl = res["tunefleet"], res["trl"]
    w, ln2 = args.warmup, math.log(2)

    def per_step(key):
        return lambda r: f"{statistics.mean(r[key][w:]):.0f}"

    rows = [
        ("mean step s (timed)", lambda r: f"{r['mean_step_s']:.3f}"),
        ("min / max step s", lambda r: f"{r['min_step_s']:.2f}/{r['max_step_s']:.2f}"),
        ("pairs/s", lambda r: f"{args.batch / r['mean_step_s']:.2f}"),
        ("real tokens / step", per_step("real_tokens")),
        ("loss tokens / step", per_step("target_tokens")),
        ("padded tokens / step", per_step("padded_tokens")),
        ("first-step loss", lambda r: f"{r['first_loss']:.4f}"),
        ("last-step loss", lambda r: f"{r['losses'][-1]:.4f}"),
        ("trainable params", lambda r: f"{r['trainable_params']:,}"),
    ]
    precision = "fp32" if args.fp32 else "bf16 autocast"
    print(f"\nmodel={args.model} data={args.data} pairs/step={args.batch} max_length={args.max_length} "
          f"max_prompt={args.max_prompt_length} {precision} {'full' if args.full else 'LoRA r16'} "
          f"reference={'live' if args.live_ref else 'precomputed'} "
          f"tokens={'trl-own' if args.trl_tokens else 'identical'} steps={args.steps}+{w} warmup "
          f"threads={args.threads} lr={args.lr} beta={args.beta}")
    print(f"matmul peak 2048^2: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s; "
          f"load average (1 min) before/after tunefleet/after trl: "
          f"{load['start']:.2f}/{load['tunefleet']:.2f}/{load['trl']:.2f}")
    print(f"{'':24}{'tunefleet':>14}{'trl':>14}")
    for name, fmt in rows:
        print(f"{name:24}{fmt(tf):>14}{fmt(trl):>14}")
    rel = abs(tf["first_loss"] - trl["first_loss"]) / max(abs(trl["first_loss"]), 1e-12)
    if rel > LOSS_TOLERANCE:
        print(f"WARNING: first-step losses differ by {rel:.1%} (> {LOSS_TOLERANCE:.0%}): "
              "the two sides may not be training on the same thing")
    else:
        print(f"first-step losses agree within {rel:.2%} (policy = reference at step 1: ln 2 = {ln2:.4f})")
    for side, r in res.items():
        if abs(r["first_loss"] - ln2) > LOSS_TOLERANCE * ln2:
            print(f"WARNING: {side}'s first-step loss {r['first_loss']:.4f} is not ln 2: "
                  "its reference is not the starting policy")
    ratio = trl["mean_step_s"] / tf["mean_step_s"]
    print(f"RATIO trl/tunefleet step time = {ratio:.2f}")
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "matmul_gflops": peaks, "loadavg_1min": load, "ratio_trl_over_tunefleet": ratio,
            "first_loss_rel_diff": rel, **res}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:  # a measured subprocess
        result = (run_tunefleet if args.side == "tunefleet" else run_trl)(args)
        args.result.write_text(json.dumps(result))
        return 0
    if args.data is None:
        args.data = "hh" if args.hh_path.is_file() else "arith"
        if args.data == "arith":
            print(f"note: {args.hh_path} not found; using the built-in arith preference pairs")
    elif args.data == "hh" and not args.hh_path.is_file():
        print(f"SKIP: --data hh needs {args.hh_path}, which does not exist")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    load = {"start": os.getloadavg()[0]}
    # Measured first, while nothing else of ours is running: shows whether the cores are shared.
    peaks = {k: matmul_gflops(k) for k in ("fp32", "bf16")}
    base = [str(Path(__file__).resolve()), "--data", args.data]
    passthrough = list(argv if argv is not None else sys.argv[1:])
    res = {}
    for side in ("tunefleet", "trl"):  # sequential: the two must not share the cores
        print(f"--- running {side} ...", flush=True)
        res[side] = run_side(base + passthrough + ["--side", side], args.threads)
        load[side] = os.getloadavg()[0]
    out = _report(args, res, peaks, load)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
