"""The explicit registry: `algorithm.type` -> loss function. The only place that maps names
to behaviour; nothing outside `algorithms/` branches on an algorithm's name."""

from __future__ import annotations

from collections.abc import Callable

from tunefleet.algorithms.base import LossInputs, LossOutput, StepStatistic
from tunefleet.algorithms.preference import (
    KTO_STEP_STATISTIC,
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
)
from tunefleet.algorithms.reward import reward_model_loss
from tunefleet.algorithms.rl import policy_loss
from tunefleet.algorithms.sft import sft_loss

LossFn = Callable[[LossInputs, object], LossOutput]

LOSSES: dict[str, LossFn] = {
    "sft": sft_loss,
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
    "kto": kto_loss,
    "reward_model": reward_model_loss,
    # Online RL: one clipped policy loss; the methods differ in their advantages (rl.py).
    "grpo": policy_loss,
    "rloo": policy_loss,
    "reinforce_pp": policy_loss,
}


def get_loss(algorithm_type: str) -> LossFn:
    """Look up the loss for `algorithm.type`; KeyError lists what is registered."""
    try:
        return LOSSES[algorithm_type]
    except KeyError:
        raise KeyError(f"no loss registered for algorithm.type={algorithm_type!r}; known: {sorted(LOSSES)}") from None

# Statistics of the whole step that a loss needs (see base.StepStatistic); most need none.
STEP_STATISTICS: dict[str, StepStatistic] = {"kto": KTO_STEP_STATISTIC}


def get_step_statistic(algorithm_type: str) -> StepStatistic | None:
    """The step statistic registered for `algorithm.type`, or None."""
    return STEP_STATISTICS.get(algorithm_type)
