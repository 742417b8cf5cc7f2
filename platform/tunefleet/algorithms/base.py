"""Typed inputs and outputs shared by every loss. Pure torch, no distributed code.

Normalisation contract: a loss divides by the *global* counts in `LossInputs` (over every
micro-batch and every rank of one optimizer step), so summing the per-micro-batch losses of
all ranks gives exactly the full-batch loss. That is what makes gradient accumulation and
sharding invariant by construction instead of by luck.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class LossInputs:
    """One micro-batch as a loss sees it.

    logps:        [B, T] log pi(token_t+1 | prefix) of each target token; 0 where not counted.
    mask:         [B, T] float, 1.0 on the target tokens that count towards the loss.
    num_tokens:   counted tokens in the whole optimizer step (all micro-batches, all ranks).
    num_sequences: sequences in the whole optimizer step.
    extras:       per-algorithm columns, e.g. "ref_logps" [B, T], "advantages" [B].
    values:       [B] scalar-head outputs (reward models); None for language-model losses.
    """

    logps: torch.Tensor
    mask: torch.Tensor
    num_tokens: float
    num_sequences: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    values: torch.Tensor | None = None


@dataclass
class LossOutput:
    """`loss` is a scalar tensor; `metrics` are scalar tensors that are *sums* of per-step
    contributions (already divided by the global counts), so the loop can add them up across
    micro-batches and ranks the same way as the loss."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class StepStatistic:
    """A statistic of the whole optimizer step that a loss needs (KTO's KL baseline): the
    step (train/step.py) computes every micro-batch's no-grad extras first, adds up
    `partial(extras)` over its micro-batches and all ranks, and hands `finish(sums)` to
    every micro-batch's loss as more extras. So the loss stays a pure function and still
    sees one value per step, whatever the micro-batching or the number of ranks.

    partial: a micro-batch's extras -> {name: float} sums (the same names on every call).
    finish:  {name: summed float} -> {name: scalar tensor} extras.
    """

    partial: Callable[[dict[str, torch.Tensor]], dict[str, float]]
    finish: Callable[[dict[str, float]], dict[str, torch.Tensor]]


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of `values * mask` over all elements; shapes [B, T] -> scalar."""
    return (values * mask).sum()


def sequence_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence masked sum: [B, T] -> [B]."""
    return (values * mask).sum(dim=-1)
