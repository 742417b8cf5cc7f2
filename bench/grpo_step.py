"""GRPO step time: tunefleet's RL training job vs TRL's GRPOTrainer, in one run.

One GRPO step = sample `--group` (G) completions of at most `--new-tokens` (T) tokens for
each of `--prompts` (P) prompts, score them, one clipped policy-gradient update over all
P*G completions (one micro-batch, no gradient accumulation), and (tunefleet) push the new
weights to the rollout engine. What is the same on both sides:

- Model and training: the same model directory (`resolve_model`), LoRA r16 alpha 32
  all-linear (or `--full`), fp32 weights with bf16 autocast (or `--fp32`), AdamW at a
  constant LR (no warm-up, weight decay 0, clip 1.0), no KL term (beta 0, so no reference
  model), token-level loss aggregation (TRL `loss_type="dapo"`), the ratio clipped to
  [1 - 0.2, 1 + 0.28] (the config's clip_low/clip_high; TRL epsilon/epsilon_high),
  group-normalised advantages (TRL `scale_rewards="group"`), no gradient checkpointing.
- Data: the arith train prompts of `jobs/configs/grpo_arith.yaml` (`--level`), in
  tunefleet's order (its seeded `GlobalOrder`, step by step; TRL gets them in that order
  with `shuffle_dataset=False`), as conversational prompts [{"role": "user", ...}] (the
  TRL side checks that its chat-templated prompt tokens are tunefleet's), the same reward
  (`get_task("arith").verify(completion, answer)`: 1.0 / 0.0), temperature 1.0, top_p
  (`--top-p`), no top-k, no zero-variance resampling (tunefleet `drop_zero_variance=false`:
  TRL does not resample).
- CPUs: `--threads` cores on each side. tunefleet: 1 vLLM engine with threads/2 CPUs and 1
  Ray Train worker with the rest (the default 2 = 1 + 1 = 2 cores in all); TRL: one process
  with `torch.set_num_threads(threads)` doing both generation (HF `generate`; its vLLM
  colocate mode does not run on CPU) and training. With `--staleness 0` tunefleet's
  generation and update alternate, so the update runs on all `--threads` cores
  (`trainer.torch_threads`) while the engine idles; generation keeps the engine's share.
  Each side runs in its own subprocess, one after the other.

What is not the same: generation precision under bf16. tunefleet's vLLM engine holds bf16
weights (`rollout.dtype=bfloat16`); stock TRL 1.16 with `bf16=True` autocasts only the loss
forward, and its HF `generate` runs in fp32 (accelerate's autocast wraps the PeftModel's
`forward`, which `generate` does not go through). The TRL side prints the dtype a layer-0
projection produced in each phase; `--trl-gen-bf16` wraps TRL's generation in bf16
autocast as well (not stock TRL: record which one a result used).

What is measured, per step, mean over the steps after `--warmup`:

- tunefleet: `run_train_job(cfg)` on `jobs/configs/grpo_arith.yaml` with overrides (MLflow in
  a temporary sqlite database, run storage in a temporary directory, no evaluation, only
  the final checkpoint). Its per-step MLflow metrics: `step_time_s` (the whole step:
  generate + score + update + weight sync), `rollout_s`, `update_s`, `sync_s`.
- TRL: a `TrainerCallback`'s `on_step_begin`..`on_step_end`: in TRL 1.16 generation and
  scoring happen inside the step (`training_step` -> `_prepare_inputs` ->
  `_generate_and_score_completions`, timed separately as "rollout"), followed by the
  loss, backward, clip and optimizer step; only fetching the raw prompt rows from the data
  loader happens before `on_step_begin`.
- Both: the wall time of the whole job (tunefleet: Ray start, data, rollout pool start,
  steps, final checkpoint; TRL: trainer construction + `train()`) and its overhead = wall
  - sum of all step times (warm-up steps included).

`RATIO trl/tunefleet s/step = X.XX`: higher means tunefleet is faster.

    .venv/bin/python bench/grpo_step.py --json /tmp/grpo_step.json   # smollm2, 4 prompts x 8, 24 tokens, LoRA, bf16
    .venv/bin/python bench/grpo_step.py --staleness 1                 # tunefleet generates one step ahead
    .venv/bin/python bench/grpo_step.py --trl-gen-bf16                # TRL generates under bf16 autocast too
    .venv/bin/python bench/grpo_step.py --model tiny-llama --steps 1 --warmup 1 --new-tokens 8 \\
        --group 4 --prompts 2 --fp32                                  # smoke test (~2 min, mostly start-up)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_gflops, run_side  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "jobs" / "configs" / "grpo_arith.yaml"
TF_METRICS = ("step_time_s", "rollout_s", "update_s", "sync_s", "reward_mean", "response_len")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or HF directory")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (P)")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--new-tokens", type=int, default=24, help="max completion tokens (T)")
    p.add_argument("--level", type=int, default=1, help="arith difficulty")
    p.add_argument("--steps", type=int, default=4, help="timed steps (after warmup)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--fp32", action="store_true", help="fp32 instead of bf16 (both sides)")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r16 all-linear")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--staleness", type=int, default=0,
                   help="tunefleet rollout.max_staleness (>= 1: generate the next step during the update)")
    p.add_argument("--threads", type=int, default=2, help="cores per side (tunefleet: engine + trainer)")
    p.add_argument("--trl-gen-bf16", action="store_true",
                   help="run TRL's generation under bf16 autocast too (stock TRL 1.16 generates in fp32 "
                        "even with bf16=True; only its loss forward is autocast)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--side", choices=("tunefleet", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 2:
        p.error("--threads must be >= 2 (tunefleet: one core for the engine, one for the trainer)")
    if args.group < 2:
        p.error("--group must be >= 2 (a group baseline)")
    return args


def _split_cores(threads: int) -> tuple[int, int]:
    """(engine CPUs, trainer CPUs) of tunefleet's `threads` cores."""
    engine = max(1, threads // 2)
    return engine, threads - engine


def _config(args, tmp: Path):
    """The tunefleet config both sides read (TRL: for the prompts, seed and clip range)."""
    from tunefleet.config import load_config

    b = args.prompts * args.group
    engine_cpus, trainer_cpus = _split_cores(args.threads)
    overrides = [
        f"model.name={args.model}", f"data.level={args.level}",
        f"algorithm.group_size={args.group}", f"algorithm.max_new_tokens={args.new_tokens}",
        "algorithm.temperature=1.0", f"algorithm.top_p={args.top_p}",
        "algorithm.drop_zero_variance=false", "algorithm.kl_beta=0",
        "algorithm.rollout_sample_every=0",  # no Parquet sample of rollouts (TRL: log_completions off)
        f"trainer.batch_size={b}", f"trainer.micro_batch_size={b}",
        f"trainer.max_steps={args.warmup + args.steps}", f"trainer.lr={args.lr}",
        "trainer.warmup_steps=0", "trainer.lr_schedule=constant",
        f"trainer.bf16={'false' if args.fp32 else 'true'}",
        f"trainer.cpus_per_worker={trainer_cpus}", "trainer.num_workers=1",
        # On-policy, the engine idles while the trainer updates (and vice versa): the update
        # may use every core, as TRL's does. With staleness >= 1 they overlap: keep them apart.
        f"trainer.torch_threads={args.threads if args.staleness == 0 else trainer_cpus}",
        f"rollout.dtype={'float32' if args.fp32 else 'bfloat16'}",
        f"rollout.resources_per_engine={engine_cpus}", "rollout.num_engines=1",
        f"rollout.max_staleness={args.staleness}",
        "eval.before=false", "eval.after=false", "checkpoint.every_steps=0",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.experiment=bench-grpo-step",
        f"run.name=bench-grpo-{os.getpid()}-{int(time.time())}", f"run.storage={tmp / 'runs'}",
    ]
    if args.full:
        overrides.append("model.lora=null")
    return load_config(CONFIG, overrides)


def _summary(args, times: list[float], rollout: list[float], update: list[float], sync: list[float] | None,
             rewards: list[float], lengths: list[float], wall: float) -> dict:
    w = args.warmup
    timed = times[w:]
    mean = statistics.mean
    return {"step_s": times, "mean_step_s": mean(timed), "min_step_s": min(timed), "max_step_s": max(timed),
            "rollout_s": rollout, "mean_rollout_s": mean(rollout[w:]),
            "update_s": update, "mean_update_s": mean(update[w:]),
            "sync_s": sync, "mean_sync_s": mean(sync[w:]) if sync else None,
            "reward_mean": rewards, "reward_mean_all": mean(rewards) if rewards else None,
            "completion_len": lengths, "mean_completion_len": mean(lengths[w:]) if lengths else None,
            "wall_s": wall, "overhead_s": wall - sum(times)}


# ---------------------------------------------------------------- tunefleet side (subprocess)
def run_tunefleet(args) -> dict:
    """The whole job through `run_train_job`; step metrics read back from MLflow."""
    from mlflow.tracking import MlflowClient

    from tunefleet.pipelines.train_job import run_train_job

    tmp = Path(tempfile.mkdtemp(prefix="tunefleet-grpo-bench-"))
    try:
        cfg = _config(args, tmp)
        t0 = time.perf_counter()
        result = run_train_job(cfg)
        wall = time.perf_counter() - t0
        import ray

        ray.shutdown()
        client = MlflowClient(cfg.tracking.uri)
        hist = {}
        for key in TF_METRICS:
            by_step = {m.step: m.value for m in client.get_metric_history(result.run_id, key)}
            hist[key] = [by_step[s] for s in sorted(by_step)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = args.warmup + args.steps
    if len(hist["step_time_s"]) != total:
        raise SystemExit(f"tunefleet logged {len(hist['step_time_s'])} steps, expected {total}")
    out = _summary(args, hist["step_time_s"], hist["rollout_s"], hist["update_s"], hist["sync_s"],
                   hist["reward_mean"], hist["response_len"], wall)
    out["run_id"] = result.run_id
    return out


# ---------------------------------------------------------------- TRL side (subprocess)
def run_trl(args) -> dict:
    """TRL GRPOTrainer on the same prompts in the same order, timed by a callback."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tunefleet.data import get_task
    from tunefleet.data.prepare import prepare_data
    from tunefleet.models.registry import load_model, load_tokenizer, resolve_model
    from tunefleet.train.order import GlobalOrder

    torch.set_num_threads(args.threads)
    total, P, G = args.warmup + args.steps, args.prompts, args.group
    cfg = _config(args, Path(tempfile.gettempdir()))  # only data, seed, sampling, clip and LoRA are used here
    model_dir = resolve_model(cfg.model.name)
    tok = load_tokenizer(model_dir)
    # tunefleet's prompt rows and the prompts its RolloutSource takes at each step.
    data = prepare_data(cfg.data, "rl", tok, cfg.rollout.max_model_len - cfg.algorithm.max_new_tokens)
    order = GlobalOrder(len(data.rows), cfg.trainer.seed)
    rows = [data.rows[i] for step in range(total) for i in order.batch(step, P)]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in rows])
    task = get_task(cfg.data.task)

    def arith_reward(prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if task.verify(t, a) else 0.0 for t, a in zip(texts, answer)]

    torch.manual_seed(0)
    model = load_model(model_dir, dtype="float32")
    probe = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))  # layer 0's first projection
    peft_config = None
    if not args.full:
        from peft import LoraConfig as PeftLoraConfig

        lora = cfg.model.lora
        peft_config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                     target_modules=lora.target_modules, task_type="CAUSAL_LM")

    def gen_autocast():
        if args.trl_gen_bf16 and not args.fp32:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    class Timer(TrainerCallback):
        """Wall time of each optimizer step (generation included) and TRL's own logs."""

        def __init__(self):
            self.times: list[float] = []
            self.logs: list[dict] = []
            self.start = 0.0

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "reward" in logs:
                self.logs.append(dict(logs))

    class TimedGRPOTrainer(GRPOTrainer):
        """Times generate + score (inside the step) and notes the dtype generation runs in."""

        def __init__(self, *a, **k):
            self.gen_times: list[float] = []
            self.gen_tokens: list[int] = []
            self.probe_dtypes: dict[str, str] = {}
            self._phase = "train"
            super().__init__(*a, **k)

        def _generate_and_score_completions(self, inputs):
            self._phase = "generate"
            t0 = time.perf_counter()
            try:
                with gen_autocast():
                    out = super()._generate_and_score_completions(inputs)
            finally:
                self._phase = "train"
            self.gen_times.append(time.perf_counter() - t0)
            self.gen_tokens.append(int(out["completion_mask"].sum()))
            return out

    timer = Timer()
    tmp = Path(tempfile.mkdtemp(prefix="trl-grpo-bench-"))
    try:
        config = GRPOConfig(
            output_dir=str(tmp / "trl"), max_steps=total, seed=0,
            per_device_train_batch_size=P * G,  # TRL 1.16 counts completions here, not prompts
            generation_batch_size=P * G,  # -> steps_per_generation = 1: one generation per optimizer step
            gradient_accumulation_steps=1, num_generations=G, num_iterations=1, shuffle_dataset=False,
            max_completion_length=args.new_tokens, temperature=cfg.algorithm.temperature, top_p=cfg.algorithm.top_p,
            top_k=0, beta=0.0, loss_type="dapo", scale_rewards="group",
            epsilon=cfg.algorithm.clip_low, epsilon_high=cfg.algorithm.clip_high, mask_truncated_completions=False,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=cfg.trainer.max_grad_norm, optim="adamw_torch",
            bf16=not args.fp32, fp16=False,
            gradient_checkpointing=False,  # GRPOConfig defaults to True; tunefleet does not recompute
            use_vllm=False, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
            dataloader_num_workers=0, dataloader_pin_memory=False, log_completions=False, disable_tqdm=True,
        )
        t0 = time.perf_counter()
        trainer = TimedGRPOTrainer(model=model, reward_funcs=[arith_reward], args=config, train_dataset=dataset,
                                   processing_class=tok, peft_config=peft_config, callbacks=[timer])

        def note_dtype(_mod, _inp, output):
            trainer.probe_dtypes.setdefault(trainer._phase, str(output.dtype).replace("torch.", ""))

        probe.register_forward_hook(note_dtype)
        _check_prompt_tokens(trainer, dataset, rows)
        trainer.train()
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(timer.times) != total or len(trainer.gen_times) != total:
        raise SystemExit(f"TRL ran {len(timer.times)} steps / {len(trainer.gen_times)} generations, "
                         f"expected {total}")
    update = [s - g for s, g in zip(timer.times, trainer.gen_times)]
    rewards = [float(log["reward"]) for log in timer.logs]
    lengths = [n / (P * G) for n in trainer.gen_tokens]
    out = _summary(args, timer.times, trainer.gen_times, update, None, rewards, lengths, wall)
    out["trl_logs"] = timer.logs
    out["dtype_generate"] = trainer.probe_dtypes.get("generate", "n/a")
    out["dtype_train"] = trainer.probe_dtypes.get("train", "n/a")
    return out


def _check_prompt_tokens(trainer, dataset, rows: list[dict]) -> None:
    """TRL's own chat-templated prompt ids must be tunefleet's (`prompt_ids` of its rows)."""
    ids, _, _ = trainer._tokenize_prompts([dataset[i]["prompt"] for i in range(len(rows))])
    for i, (got, row) in enumerate(zip(ids, rows)):
        if list(got) != list(row["prompt_ids"]):
            raise SystemExit(f"prompt {i}: TRL's prompt tokens differ from tunefleet's")


# ---------------------------------------------------------------- report
def _report(args, res: dict, peaks: dict, load: dict) -> dict:
    tf, trl = res["tunefleet"], res["trl"]
    n = args.prompts * args.group

    def opt(key, fmt):
        return lambda r: "-" if r.get(key) is None else fmt.format(r[key])

    rows = [
        ("mean step s (timed)", opt("mean_step_s", "{:.3f}")),
        ("min / max step s", lambda r: f"{r['min_step_s']:.2f}/{r['max_step_s']:.2f}"),
        ("  rollout s (gen+score)", opt("mean_rollout_s", "{:.3f}")),
        ("  update s", opt("mean_update_s", "{:.3f}")),
        ("  weight sync s", opt("mean_sync_s", "{:.3f}")),
        ("completions/s", lambda r: f"{n / r['mean_step_s']:.2f}"),
        ("completion tokens (mean)", opt("mean_completion_len", "{:.1f}")),
        ("reward mean (all steps)", opt("reward_mean_all", "{:.3f}")),
        ("job wall s", opt("wall_s", "{:.1f}")),
        ("overhead s (wall-steps)", opt("overhead_s", "{:.1f}")),
    ]
    precision = "fp32" if args.fp32 else "bf16"
    e, t = _split_cores(args.threads)
    print(f"\nmodel={args.model} arith level={args.level} prompts/step={args.prompts} group={args.group} "
          f"max_new_tokens={args.new_tokens} {precision} {'full' if args.full else 'LoRA r16'} "
          f"steps={args.steps}+{args.warmup} warmup lr={args.lr} top_p={args.top_p} "
          f"staleness={args.staleness} cores/side={args.threads} (tunefleet: engine {e} + trainer {t})")
    print(f"matmul peak 2048^2: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s; "
          f"load average (1 min) before/after tunefleet/after trl: "
          f"{load['start']:.2f}/{load['tunefleet']:.2f}/{load['trl']:.2f}")
    print(f"TRL probe (layer-0 projection) output dtype: generate {trl['dtype_generate']}, "
          f"train {trl['dtype_train']}{' (--trl-gen-bf16)' if args.trl_gen_bf16 else ''}")
    print(f"{'':26}{'tunefleet':>14}{'trl':>14}")
    for name, fmt in rows:
        print(f"{name:26}{fmt(tf):>14}{fmt(trl):>14}")
    ratio = trl["mean_step_s"] / tf["mean_step_s"]
    print(f"RATIO trl/tunefleet s/step = {ratio:.2f}")
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "matmul_gflops": peaks, "loadavg_1min": load, "ratio_trl_over_tunefleet": ratio, **res}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:  # a measured subprocess
        result = (run_tunefleet if args.side == "tunefleet" else run_trl)(args)
        args.result.write_text(json.dumps(result))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    load = {"start": os.getloadavg()[0]}
    # Measured first, while nothing else of ours is running: shows whether the cores are shared.
    peaks = {k: matmul_gflops(k) for k in ("fp32", "bf16")}
    base = [str(Path(__file__).resolve())]
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
