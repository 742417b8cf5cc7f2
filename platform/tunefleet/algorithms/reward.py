"""Bradley-Terry reward-model loss on a scalar head. Pure torch."""

from __future__ import annotations

import torch.nn.functional as F

from tunefleet.algorithms.base import LossInputs, LossOutput
from tunefleet.algorithms.preference import _pair_metrics, split_pairs


def reward_model_loss(inputs: LossInputs, cfg) -> LossOutput:
    """-log sigmoid(r_c - r_r) per pair, plus center_rewards_coef * mean((r_c + r_r)^2) to
    keep rewards near zero. inputs.values [2b] in the pairwise layout (chosen rows first)."""
    if inputs.values is None:
        raise ValueError("reward_model_loss needs a value head (inputs.values)")
    rc, rr = split_pairs(inputs.values)
    per_pair = -F.logsigmoid(rc - rr)
    if cfg.center_rewards_coef:
        per_pair = per_pair + cfg.center_rewards_coef * (rc + rr) ** 2
    return LossOutput(per_pair.sum() / inputs.num_sequences, _pair_metrics(rc, rr, inputs.num_sequences))
