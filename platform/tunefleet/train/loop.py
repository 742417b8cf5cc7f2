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
from tunefleet.telemetry import loop_metrics
from tunefleet.train.control import stop_requested
from tunefleet.train.eval_hook import EvalHook
from tunefleet.train.progress import StatusLine
from tunefleet.train.schedule import lr_factor
from tunefleet.train.sources import make_source
from tunefleet.train.step import StepContext, autocast_bf16, train_step


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
    # Online RL scores tokens at the sampling temperature (the engines' log-probs are at it too).
    temperature = getattr(algo, "policy_temperature", 1.0)
    policy = build_policy(model_dir, cfg.model.dtype, cfg.model.lora, device, world, value_head=algo.VALUE_HEAD,
                          temperature=temperature)
    t = cfg.trainer
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.max_steps, t.warmup_steps, t.lr_schedule, t.min_lr_ratio)
    )
    reference = None
    bf16 = autocast_bf16(t.bf16, device.type)
    if cfg.reference_mode == "live":
        from tunefleet.train.reference import live_reference

        reference = live_reference(model_dir, policy, device, world, cfg.model.dtype, bf16)
    return StepContext(policy, optimizer, scheduler, get_loss(algo.type), algo, device, world,
                       t.max_grad_norm, bf16, reference)


class _Reporter:
    """Rank 0's MLflow records, relayed to the driver through the run's control actor
    (tracking/relay.py): no worker talks to MLflow or needs the driver's disk."""

    def __init__(self, control_name: str | None, run_id: str | None, rank: int):
        self.tracker = None
        if rank == 0 and run_id and control_name:
            import ray

            from tunefleet.tracking.relay import RelayTracker

            self.tracker = RelayTracker(ray.get_actor(control_name), run_id)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.flush()


def _checkpoint(ctx: StepContext, step: int, rank: int, metrics: dict, model_dir: str | None,
                extra: dict | None = None) -> None:
    """Collective. Writes the training state (plus `export/` when `model_dir` is given, at
    the end) and a manifest, then hands the directory to Ray Train, which persists it.
    `extra`: the batch source's state (state.json)."""
    import ray.train

    from tunefleet.models.checkpoint import write_manifest
    from tunefleet.train.export_step import export_final
    from tunefleet.train.state import save_training_state

    final = model_dir is not None
    with tempfile.TemporaryDirectory(prefix="tunefleet-ckpt-") as tmp:
        d = Path(tmp)
        save_training_state(d, ctx.policy, ctx.optimizer, ctx.scheduler, step, rank, extra)
        if final:
            export_final(d, ctx, rank, model_dir)
        if rank == 0:
            write_manifest(d)
        ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report({**metrics, "step": step, "final": final}, checkpoint=ckpt,
                         checkpoint_dir_name=f"checkpoint_{step:06d}")


def _start_from(loop_config: dict):
    """Another run's checkpoint to start from (a PBT exploit), used only while this run has
    none of its own: after a restart the run resumes its own newest."""
    import ray.train

    if not loop_config.get("start_from"):
        return None
    path, filesystem = loop_config["start_from"]
    return ray.train.Checkpoint(path, filesystem=filesystem)


def _apply_hyperparameters(ctx: StepContext, t) -> None:
    """The config's learning rate and weight decay over those the checkpoint's optimizer and
    schedule state carried: the same for a resumed run; for a PBT trial restoring a donor's
    checkpoint, its own perturbed values (the schedule's position stays the donor's)."""
    sched = ctx.scheduler
    sched.base_lrs = [t.lr for _ in ctx.optimizer.param_groups]
    factor = lr_factor(sched.last_epoch, t.max_steps, t.warmup_steps, t.lr_schedule, t.min_lr_ratio)
    for group in ctx.optimizer.param_groups:
        group["initial_lr"], group["lr"], group["weight_decay"] = t.lr, t.lr * factor, t.weight_decay
    sched._last_lr = [g["lr"] for g in ctx.optimizer.param_groups]


def _resume(ctx: StepContext, checkpoint, rank: int, cfg_trainer) -> tuple[int, dict]:
    """Load the newest checkpoint that verifies (a corrupt newest one falls back to the one
    before, with a warning). Returns the step to continue from and the saved state.json."""
    from tunefleet.train.state import load_training_state, newest_valid

    if checkpoint is None:
        return 0, {}
    with checkpoint.as_directory() as d:
        path = newest_valid(Path(d))
        if path is None:
            raise RuntimeError(f"no checkpoint under {Path(d).parent} passes verification")
        state = load_training_state(path, ctx.policy, ctx.optimizer, ctx.scheduler)
        _apply_hyperparameters(ctx, cfg_trainer)
        # From remote storage the newest checkpoint is a download under a temporary name.
        name = os.path.basename(checkpoint.path.rstrip("/")) if path == Path(d) else path.name
    if rank == 0:
        print(f"[train] resumed from {name} at step {state['step']}", flush=True)
    return state["step"], state


def _inject_faults(t, done: int, start: int, rank: int, world: int, run_id: str | None) -> None:
    """Test hooks, once per run: raise, or die like an OOM-killed or preempted process
    (SIGKILL: no cleanup, no exception for Ray to see). "Once" is a marker file, not
    `start == 0`: a group restarted before its newest checkpoint registered starts at 0 again."""
    if start != 0:
        return
    if t.fail_at_step is not None and done == t.fail_at_step:
        raise RuntimeError(f"fault injection: trainer.fail_at_step={t.fail_at_step} reached")
    if t.kill_at_step is not None and done == t.kill_at_step and rank == world - 1:
        import signal

        marker = Path(tempfile.gettempdir()) / f"tunefleet-killed-{run_id or os.getppid()}-{done}"
        if marker.exists():
            return
        marker.touch()
        print(f"[train] fault injection: killing rank {rank} (pid {os.getpid()}) after step {done}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def _control(name: str | None, rank: int):
    """Rank 0's handle on the run's control actor (None: nothing can ask this run to stop)."""
    if rank != 0 or not name:
        return None
    import ray

    return ray.get_actor(name)


class _PreemptNotice:
    """Remembers that this group already wrote its just-in-time checkpoint for a drain."""

    saved_for: tuple | None = None


def _preemption(notice: _PreemptNotice, done: int, rank: int):
    """Collective (Ray Train barrier): a *new* drain notice for a node of this group (spot
    reclaim, KubeRay/autoscaler scale-down), or None. Ray Train restarts the group without
    that node when it goes; a checkpoint now means no step is lost to it."""
    import ray.train

    info = ray.train.get_preemption_info()
    key = None if info is None else tuple(info.preempted_node_ids)
    if key is None or key == notice.saved_for:
        return None
    notice.saved_for = key
    if rank == 0:
        left = f"{info.deadline_ms / 1000 - time.time():.0f} s left" if info.deadline_ms else "no deadline"
        print(f"[train] preemption notice after step {done}: ranks {info.preempted_ranks} on "
              f"{len(key)} draining node(s), {left}; writing a checkpoint", flush=True)
    return info


def _end_of_step(ctx: StepContext, cfg: Config, done: int, rank: int, world: int, metrics: dict, source,
                 loop_config: dict, control, notice: _PreemptNotice) -> bool:
    """Collective. Checkpoint when due (every_steps, the last step), on a new preemption
    notice, or on a stop request (then return True: the loop ends after this step)."""
    t, every = cfg.trainer, cfg.checkpoint.every_steps
    final = done == t.max_steps
    due = final or bool(every and done % every == 0)
    if due:
        _checkpoint(ctx, done, rank, metrics, loop_config["model_dir"] if final else None, source.state())
    if final:
        return False
    if _preemption(notice, done, rank) is not None and not due:
        _checkpoint(ctx, done, rank, {**metrics, "preempted": True}, None, source.state())
        due = True
    reason = stop_requested(control, rank, world)
    if reason is None:
        return False
    if not due:
        _checkpoint(ctx, done, rank, {**metrics, "stopped": True}, None, source.state())
    if rank == 0:
        print(f"[train] stopped after step {done} ({reason}); checkpoint written", flush=True)
    return True


class _Counted:
    """The batch source as _end_of_step sees it: its state() also keeps the token count."""

    def __init__(self, source, tokens: int):
        self.source, self.tokens = source, tokens

    def state(self) -> dict:
        return {**self.source.state(), "train_tokens": self.tokens}


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point. loop_config: config (dict), model_dir, pad_id, run_id,
    control_name (the run's stop switch and rank 0's MLflow relay, train/control.py), data_ref (ObjectRef of
    the tokenized rows, or of RL prompt rows) and, for RL, the pool's name, config and the
    reward specs (train/rollout_source.py)."""
    import ray.train

    cfg = config_from_dict(loop_config["config"])
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    from tunefleet.models.registry import node_model_dir

    # This node's copy of the base model (not the driver's path): used for setup and the final export.
    loop_config = {**loop_config, "model_dir": node_model_dir(loop_config["model_dir"])}
    ctx = _setup(cfg, loop_config["model_dir"], rank, world)
    start, saved = _resume(ctx, ray.train.get_checkpoint() or _start_from(loop_config), rank, cfg.trainer)
    t = cfg.trainer
    status = StatusLine(t.max_steps, t.status_every_s, start_step=start)
    reporter = _Reporter(loop_config.get("control_name"), loop_config.get("run_id"), rank)
    source = make_source(cfg, loop_config, ctx, rank, world, reporter.tracker)
    source.start(start, saved)
    evals = EvalHook(cfg, loop_config, ctx, rank, reporter)
    evals.start(start, int(saved.get("train_tokens", 0)))
    control = _control(loop_config.get("control_name"), rank)
    gauges = loop_metrics(cfg, loop_config)  # Prometheus (telemetry/): rank 0 emits, from here
    if rank == 0 and start > 0:  # a worker group started from a checkpoint: a restart
        gauges.restart()
    if rank == 0:  # the global batch is fixed; accumulation follows the (possibly resized) group
        print(f"[train] {world} worker(s), {t.grad_accum_for(world)} micro-batch(es) of {t.micro_batch_size} per "
              f"worker per step (global batch {t.batch_size}), from step {start}", flush=True)
    metrics: dict[str, float] = {}
    preempt = _PreemptNotice()
    # Global target tokens trained (eval.every_tokens, a campaign's budget points); a
    # checkpoint keeps the count, so a resumed trial goes on counting where it was.
    tokens = int(saved.get("train_tokens", 0))
    for step in range(start, t.max_steps):
        tick = time.perf_counter()
        plan = source.plan(step)
        update_start = time.perf_counter()
        metrics = train_step(ctx, plan.micro_batches, plan.num_tokens, plan.num_sequences)
        metrics["update_s"] = time.perf_counter() - update_start
        done = step + 1
        tokens += plan.num_tokens
        metrics.update(plan.metrics)
        metrics.update(source.after_step(done))
        elapsed = time.perf_counter() - tick
        metrics["tokens_per_s"] = metrics.pop("real_tokens") / elapsed
        metrics["step_time_s"] = elapsed
        metrics["world_size"], metrics["grad_accum"] = float(world), float(t.grad_accum_for(world))
        reporter.metrics(metrics, step=done)
        if rank == 0:
            status.update(done, metrics)
            gauges.step(done, metrics)
        if _end_of_step(ctx, cfg, done, rank, world, metrics, _Counted(source, tokens), loop_config, control,
                        preempt):
            break
        evals.after_step(done, tokens)
        _inject_faults(t, done, start, rank, world, loop_config.get("run_id"))
    source.close()
    reporter.close()
