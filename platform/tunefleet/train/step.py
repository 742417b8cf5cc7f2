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

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tunefleet.algorithms import LossInputs
from tunefleet.algorithms.base import sequence_sum
from tunefleet.algorithms.registry import get_step_statistic
from tunefleet.models.policy import IGNORE, Policy
from tunefleet.train.collectives import all_reduce_sum


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


_BF16_NOTED: set[str] = set()


def autocast_bf16(requested: bool, device_type: str) -> bool:
    """Whether `trainer.bf16` autocast really runs. A CPU without native bf16 (no AVX512-BF16
    or AMX, e.g. AVX2 only) emulates it: measured on the 2-core AVX2 machine, the demo's LoRA
    step of SmolLM2-135M took 171 s in bf16 autocast. There it is fp32, said once per process."""
    if not requested or device_type != "cpu":
        return requested
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    if not native and "cpu" not in _BF16_NOTED:
        _BF16_NOTED.add("cpu")
        print(f"[train] trainer.bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16; "
              "running fp32 instead (emulated bf16 is many times slower)", flush=True)
    return native


def run_model(module, seqs: dict[str, torch.Tensor], device: torch.device, bf16: bool, **kw):
    """Run a TokenLogpModel / ValueModel on collated sequences: logps [B, T], or values [B]
    (`entropy=True`: a TokenLogpModel returns (logps, entropies [B, T]))."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return module(input_ids=seqs["input_ids"], labels=seqs["labels"], position_ids=seqs.get("position_ids"),
                      **kw)


def forward(ctx: StepContext, seqs: dict[str, torch.Tensor], **kw):
    return run_model(ctx.policy.module, seqs, ctx.device, ctx.bf16, **kw)


def _to(obj, device: torch.device):
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _aux_extras(ctx: StepContext, mb: dict) -> dict[str, torch.Tensor]:
    """No-grad scores of each aux group: extras[f"{name}_logps"] [B] (per-sequence sums) and,
    with a live reference, extras[f"ref_{name}_logps"] [B]."""
    extras = {}
    with torch.no_grad():
        for name, seqs in mb["aux"].items():
            aux_mask = (seqs["labels"] != IGNORE).float()
            extras[f"{name}_logps"] = sequence_sum(forward(ctx, seqs), aux_mask)
            if ctx.reference is not None:
                extras[f"ref_{name}_logps"] = sequence_sum(ctx.reference(seqs), aux_mask)
    return extras


def _prepass(ctx: StepContext, micro_batches: list[dict]) -> list[dict | None]:
    """For a loss with a step statistic (algorithms/base.py StepStatistic, e.g. KTO's KL
    baseline): every micro-batch's aux scores first, then the statistic summed over all
    micro-batches and ranks, added to each micro-batch's extras. Otherwise nothing."""
    stat = get_step_statistic(ctx.algo_cfg.type)
    if stat is None:
        return [None] * len(micro_batches)
    aux = [_aux_extras(ctx, mb) for mb in micro_batches]
    sums: dict[str, float] = {}
    for mb, extras in zip(micro_batches, aux):
        for k, v in stat.partial({**mb["extras"], **extras}).items():
            sums[k] = sums.get(k, 0.0) + v
    keys = sorted(sums)
    totals = dict(zip(keys, all_reduce_sum([sums[k] for k in keys], ctx.world)))
    step = {k: v.to(ctx.device) for k, v in stat.finish(totals).items()}
    return [{**extras, **step} for extras in aux]


def _loss_inputs(ctx: StepContext, mb: dict, num_tokens: int, num_sequences: int,
                 pre: dict | None = None) -> LossInputs:
    """The loss's view of one micro-batch; `pre`: its extras from _prepass (aux scores and
    step statistics), else the aux groups are scored here."""
    main = mb["main"]
    mask = (main["labels"] != IGNORE).float()
    extras = dict(mb["extras"])
    if getattr(ctx.algo_cfg, "TOKEN_ENTROPY", False):  # RL: the distribution's entropy, for the metric
        out, extras["entropy"] = forward(ctx, main, entropy=True)
    else:
        out = forward(ctx, main)
    with torch.no_grad():
        # Precomputed reference values (a cache, or an RL pre-pass) are not recomputed.
        if ctx.reference is not None and "ref_seq_logps" not in extras and "ref_logps" not in extras:
            extras["ref_logps"] = ctx.reference(main)
    extras.update(pre if pre is not None else _aux_extras(ctx, mb))
    if ctx.policy.value_head:
        return LossInputs(torch.zeros_like(mask), mask, float(num_tokens), num_sequences, extras, values=out)
    return LossInputs(out, mask, float(num_tokens), num_sequences, extras)


def _grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    limit = max_norm if max_norm > 0 else float("inf")  # inf: measure only
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def train_step(ctx: StepContext, micro_batches: list[dict], num_tokens: int, num_sequences: int) -> dict[str, float]:
    """Run one optimizer step over this rank's micro-batches.

    micro_batches: batcher outputs (see module docstring); num_tokens and num_sequences
    count the *global* step. Returns metrics summed over all ranks.
    """
    ctx.policy.module.train()
    loss_sum, real_tokens = 0.0, 0
    metric_sums: dict[str, float] = {}
    micro_batches = [_to(mb, ctx.device) for mb in micro_batches]
    pre = _prepass(ctx, micro_batches)
    for i, mb in enumerate(micro_batches):
        if ctx.policy.sharded:  # only the last micro-batch reduce-scatters gradients
            ctx.policy.module.set_requires_gradient_sync(i == len(micro_batches) - 1)
        out = ctx.loss_fn(_loss_inputs(ctx, mb, num_tokens, num_sequences, pre[i]), ctx.algo_cfg)
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
    reduced = all_reduce_sum([loss_sum, float(real_tokens)] + [metric_sums[k] for k in keys], ctx.world)
    metrics = {"loss": reduced[0], "real_tokens": reduced[1], "grad_norm": grad_norm, "lr": lr}
    metrics.update({k: reduced[2 + j] for j, k in enumerate(keys)})
    return metrics
