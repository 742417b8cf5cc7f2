"""One optimizer step: micro-batches -> loss plugin -> backward -> clip -> step.

Distributed plumbing stays here, not in the losses: every loss divides by global counts
(see algorithms/base.py), FSDP2 averages gradients over ranks, so the loss is multiplied by
the world size before backward to turn that average back into the global sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from tunefleet.algorithms import LossInputs
from tunefleet.models.policy import IGNORE, Policy


@dataclass
class StepContext:
    """What a step needs besides the batch; built once per run."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: object
    algo_cfg: object
    device: torch.device
    world: int
    max_grad_norm: float
    bf16: bool


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that count towards the loss in a collated batch (labels != -100)."""
    return int((batch["labels"] != IGNORE).sum())


def _forward(ctx: StepContext, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.bf16):
        return ctx.policy.module(
            input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch.get("position_ids")
        )


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    limit = max_norm if max_norm > 0 else float("inf")  # inf: measure only
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def _all_reduce_sum(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def train_step(ctx: StepContext, micro_batches: list[dict[str, torch.Tensor]], num_tokens: int,
               num_sequences: int) -> dict[str, float]:
    """Run one optimizer step over this rank's micro-batches.

    micro_batches: collated dicts (input_ids/labels/position_ids [b, T]); num_tokens and
    num_sequences count the *global* step. Returns metrics summed over all ranks.
    """
    ctx.policy.module.train()
    loss_sum = 0.0
    metric_sums: dict[str, float] = {}
    real_tokens = 0
    for i, mb in enumerate(micro_batches):
        if ctx.policy.sharded:  # only the last micro-batch reduce-scatters gradients
            ctx.policy.module.set_requires_gradient_sync(i == len(micro_batches) - 1)
        mb = _to(mb, ctx.device)
        logps = _forward(ctx, mb)
        mask = (mb["labels"] != IGNORE).float()
        extras = {k: v for k, v in mb.items() if k not in ("input_ids", "labels", "position_ids", "attention_mask")}
        out = ctx.loss_fn(LossInputs(logps, mask, float(num_tokens), num_sequences, extras), ctx.algo_cfg)
        (out.loss * ctx.world).backward()
        loss_sum += float(out.loss.detach())
        for k, v in out.metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        real_tokens += int(mb["attention_mask"].sum()) if "attention_mask" in mb else mb["input_ids"].numel()
    grad_norm = _grad_norm(ctx.policy.trainable_parameters(), ctx.max_grad_norm)
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scheduler.step()
    keys = sorted(metric_sums)
    reduced = _all_reduce_sum([loss_sum, float(real_tokens)] + [metric_sums[k] for k in keys], ctx.world)
    metrics = {"loss": reduced[0], "real_tokens": reduced[1], "grad_norm": grad_norm, "lr": lr}
    metrics.update({k: reduced[2 + j] for j, k in enumerate(keys)})
    return metrics
