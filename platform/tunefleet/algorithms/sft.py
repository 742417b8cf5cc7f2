"""Supervised fine-tuning: masked negative log-likelihood over response tokens."""

from __future__ import annotations

from tunefleet.algorithms.base import LossInputs, LossOutput, masked_sum


def sft_loss(inputs: LossInputs, cfg) -> LossOutput:
    """NLL = -sum(mask * logps) / num_tokens, with optional per-token weights.

    inputs.logps [B, T], inputs.mask [B, T]; extras["weights"] [B, T] (optional) scales each
    token's contribution, e.g. to down-weight easy tokens.
    """
    weights = inputs.extras.get("weights")
    mask = inputs.mask if weights is None else inputs.mask * weights
    nll_sum = -masked_sum(inputs.logps, mask)
    loss = nll_sum / inputs.num_tokens
    return LossOutput(loss=loss, metrics={"nll": loss.detach()})
