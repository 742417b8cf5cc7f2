"""The one training loop, run by every Ray Train worker.

`train_loop_per_worker(loop_config)` is what TorchTrainer calls. The loop is the same for
every algorithm: the loss comes from the registry by `algorithm.type`.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import torch

from tunefleet.algorithms import get_loss
from tunefleet.config import Config, config_from_dict
from tunefleet.train.order import GlobalOrder, rank_micro_batches
from tunefleet.train.progress import StatusLine
from tunefleet.train.schedule import lr_factor
from tunefleet.train.step import StepContext, count_targets, train_step


def pick_device(kind: str) -> torch.device:
    """'auto' -> the local CUDA device when there is one, else CPU."""
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _setup(cfg: Config, model_dir: str, rank: int, world: int) -> StepContext:
    from tunefleet.models.policy import build_policy

    device = pick_device(cfg.trainer.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = cfg.trainer.torch_threads or max(1, int(cfg.trainer.cpus_per_worker))
    torch.set_num_threads(threads)
    _seed(cfg.trainer.seed)
    algo = cfg.algorithm
    policy = build_policy(model_dir, cfg.model.dtype, cfg.model.lora, device, world, value_head=algo.VALUE_HEAD)
    t = cfg.trainer
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.max_steps, t.warmup_steps, t.lr_schedule, t.min_lr_ratio)
    )
    reference = None
    if algo.NEEDS_REFERENCE and cfg.reference.mode == "live":
        from tunefleet.train.reference import live_reference

        reference = live_reference(model_dir, policy, device, world, cfg.model.dtype, t.bf16)
    return StepContext(policy, optimizer, scheduler, get_loss(algo.type), algo, device, world,
                       t.max_grad_norm, t.bf16, reference)


def _plan_step(rows: list[dict], global_idx: list[int], rank: int, world: int, micro: int, batcher,
               pad_id: int) -> tuple[list[dict], int, int]:
    """This rank's collated micro-batches, and the global target-token and sequence counts
    every loss normalises by (so the result does not depend on how the batch is split)."""
    batch_rows = [rows[i] for i in global_idx]
    num_tokens = count_targets(batcher.collate(batch_rows, pad_id))
    mine = [batcher.collate([rows[i] for i in chunk], pad_id)
            for chunk in rank_micro_batches(global_idx, rank, world, micro)]
    return mine, num_tokens, batcher.sequences(batch_rows)


class _Reporter:
    """Rank 0's side channel to MLflow (explicit run id, buffered on outages)."""

    def __init__(self, uri: str | None, run_id: str | None, rank: int):
        self.tracker = None
        if rank == 0 and run_id:
            from tunefleet.tracking import Tracker

            self.tracker = Tracker.attach(uri, run_id)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.flush()


def _checkpoint(ctx: StepContext, step: int, rank: int, metrics: dict, model_dir: str | None) -> None:
    """Collective. Writes the training state (plus `export/` when `model_dir` is given, at
    the end) and a manifest, then hands the directory to Ray Train, which persists it."""
    import ray.train

    from tunefleet.models.checkpoint import write_manifest
    from tunefleet.train.export_step import export_final
    from tunefleet.train.state import save_training_state

    final = model_dir is not None
    with tempfile.TemporaryDirectory(prefix="tunefleet-ckpt-") as tmp:
        d = Path(tmp)
        save_training_state(d, ctx.policy, ctx.optimizer, ctx.scheduler, step, rank)
        if final:
            export_final(d, ctx, rank, model_dir)
        if rank == 0:
            write_manifest(d)
        ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report({**metrics, "step": step, "final": final}, checkpoint=ckpt,
                         checkpoint_dir_name=f"checkpoint_{step:06d}")


def _resume(ctx: StepContext, checkpoint, rank: int) -> int:
    """Load the newest checkpoint that verifies (a corrupt newest one falls back to the one
    before, with a warning). Returns the step to continue from."""
    from tunefleet.train.state import load_training_state, newest_valid

    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        path = newest_valid(Path(d))
        if path is None:
            raise RuntimeError(f"no checkpoint under {Path(d).parent} passes verification")
        step = load_training_state(path, ctx.policy, ctx.optimizer, ctx.scheduler)["step"]
    if rank == 0:
        print(f"[train] resumed from {path.name} at step {step}", flush=True)
    return step


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point. loop_config: config (dict), model_dir, data_ref (ObjectRef of
    tokenized rows), pad_id, tracking_uri, run_id."""
    import ray
    import ray.train

    from tunefleet.data.batching import BATCHERS

    cfg = config_from_dict(loop_config["config"])
    batcher = BATCHERS[cfg.algorithm.BATCH]
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    rows = ray.get(loop_config["data_ref"])
    ctx = _setup(cfg, loop_config["model_dir"], rank, world)
    start = _resume(ctx, ray.train.get_checkpoint(), rank)
    t = cfg.trainer
    order = GlobalOrder(len(rows), t.seed)
    status = StatusLine(t.max_steps, t.status_every_s, start_step=start)
    reporter = _Reporter(loop_config.get("tracking_uri"), loop_config.get("run_id"), rank)
    metrics: dict[str, float] = {}
    for step in range(start, t.max_steps):
        tick = time.perf_counter()
        mine, num_tokens, num_seqs = _plan_step(rows, order.batch(step, t.batch_size), rank, world,
                                                t.micro_batch_size, batcher, loop_config["pad_id"])
        metrics = train_step(ctx, mine, num_tokens, num_seqs)
        elapsed = time.perf_counter() - tick
        metrics["tokens_per_s"] = metrics.pop("real_tokens") / elapsed
        metrics["step_time_s"] = elapsed
        metrics["epoch"] = order.epoch_of(step + 1, t.batch_size)
        done = step + 1
        reporter.metrics(metrics, step=done)
        if rank == 0:
            status.update(done, metrics)
        every = cfg.checkpoint.every_steps
        if done == t.max_steps or (every and done % every == 0):
            final = done == t.max_steps
            _checkpoint(ctx, done, rank, metrics, loop_config["model_dir"] if final else None)
        if t.fail_at_step is not None and done == t.fail_at_step and start < t.fail_at_step:
            raise RuntimeError(f"fault injection: trainer.fail_at_step={t.fail_at_step} reached")
    reporter.close()
