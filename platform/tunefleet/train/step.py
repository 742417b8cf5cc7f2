"""One optimizer step: micro-batches -> loss plugin -> backward -> clip -> step.

Distributed plumbing stays here, not in the losses: every loss divides by global counts
(see algorithms/base.py), FSDP2 averages gradients over ranks, so the loss is multiplied by
the world size before backward to turn that average back into the global sum.

A micro-batch is {"main": tensors, "aux": {name: tensors}, "extras": {name: tensor}}
(data/batching.py). `main` is trained on; each `aux` group is scored without gradients and
handed to the loss as extras[f"{name}_logps"] (per-sequence sums), with its reference
counterpart extras[f"ref_{name}_logps"] when a live reference is present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from tunefleet.algorithms import LossInputs
from tunefleet.algorithms.base import sequence_sum
from tunefleet.models.policy import IGNORE, Policy


@dataclass
class StepContext:
    """What a step needs besides the batch; built once per run. `reference`, when set,
    maps collated sequences to reference per-token log-probs [B, T] (no gradients)."""

    policy: Policy
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: object
    algo_cfg: object
    device: torch.device
    world: int
    max_grad_norm: float
    bf16: bool
    reference: Callable[[dict], torch.Tensor] | None = None


def count_targets(batch: dict) -> int:
    """Tokens that count towards the loss in a micro-batch (main labels != -100)."""
    main = batch.get("main", batch)
    return int((main["labels"] != IGNORE).sum())


def run_model(module, seqs: dict[str, torch.Tensor], device: torch.device, bf16: bool) -> torch.Tensor:
    """Run a TokenLogpModel / ValueModel on collated sequences: logps [B, T], or values [B]."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return module(input_ids=seqs["input_ids"], labels=seqs["labels"], position_ids=seqs.get("position_ids"))


def forward(ctx: StepContext, seqs: dict[str, torch.Tensor]) -> torch.Tensor:
    return run_model(ctx.policy.module, seqs, ctx.device, ctx.bf16)


def _to(obj, device: torch.device):
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _loss_inputs(ctx: StepContext, mb: dict, num_tokens: int, num_sequences: int) -> LossInputs:
    main = mb["main"]
    mask = (main["labels"] != IGNORE).float()
    extras = dict(mb["extras"])
    out = forward(ctx, main)
    with torch.no_grad():
        # Precomputed reference values (a cache, or an RL pre-pass) are not recomputed.
        if ctx.reference is not None and "ref_seq_logps" not in extras and "ref_logps" not in extras:
            extras["ref_logps"] = ctx.reference(main)
        for name, seqs in mb["aux"].items():
            aux_mask = (seqs["labels"] != IGNORE).float()
            extras[f"{name}_logps"] = sequence_sum(forward(ctx, seqs), aux_mask)
            if ctx.reference is not None:
                extras[f"ref_{name}_logps"] = sequence_sum(ctx.reference(seqs), aux_mask)
    if ctx.policy.value_head:
        return LossInputs(torch.zeros_like(mask), mask, float(num_tokens), num_sequences, extras, values=out)
    return LossInputs(out, mask, float(num_tokens), num_sequences, extras)


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


def train_step(ctx: StepContext, micro_batches: list[dict], num_tokens: int, num_sequences: int) -> dict[str, float]:
    """Run one optimizer step over this rank's micro-batches.

    micro_batches: batcher outputs (see module docstring); num_tokens and num_sequences
    count the *global* step. Returns metrics summed over all ranks.
    """
    ctx.policy.module.train()
    loss_sum, real_tokens = 0.0, 0
    metric_sums: dict[str, float] = {}
    for i, mb in enumerate(micro_batches):
        if ctx.policy.sharded:  # only the last micro-batch reduce-scatters gradients
            ctx.policy.module.set_requires_gradient_sync(i == len(micro_batches) - 1)
        mb = _to(mb, ctx.device)
        out = ctx.loss_fn(_loss_inputs(ctx, mb, num_tokens, num_sequences), ctx.algo_cfg)
        (out.loss * ctx.world).backward()
        loss_sum += float(out.loss.detach())
        for k, v in out.metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        real_tokens += int(mb["main"]["attention_mask"].sum())
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
