"""Reward functions of online RL: built-ins (task verifiers, answer matching, format,
length, a reward model, a code sandbox) and user functions, combined by weight.

Imports neither ray nor vllm; torch only when a `reward_model` reward first scores.
"""

from tunefleet.rewards.base import RewardInput
from tunefleet.rewards.registry import REWARDS, CombinedReward, build_reward

__all__ = ["REWARDS", "CombinedReward", "RewardInput", "build_reward"]
