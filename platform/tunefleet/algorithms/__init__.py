"""Pure-torch losses and advantages, looked up through an explicit registry."""

from tunefleet.algorithms.base import LossInputs, LossOutput
from tunefleet.algorithms.registry import LOSSES, get_loss

__all__ = ["LOSSES", "LossInputs", "LossOutput", "get_loss"]
