"""The `rewards:` list of online RL: weighted reward functions. Imports neither torch nor ray."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunefleet.config.loader import check
from tunefleet.config.loader import dotted as _p

# Built-in reward functions (tunefleet/rewards/registry.py implements exactly these; a test
# keeps the two in step). Anything else must be a user function "package.module:function".
BUILTIN_REWARDS = ("task", "exact_match", "math_answer", "format", "length_penalty", "reward_model", "code_exec")


@dataclass(frozen=True)
class RewardSpec:
    """One term of the reward: `weight * fn(sample)`. `type` is a built-in name or a user
    function given as `module:function`; `params` are passed to it as keyword arguments."""

    type: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)

    def validate(self, path: str) -> None:
        user_fn = ":" in self.type and all(part.strip() for part in self.type.split(":", 1))
        check(self.type in BUILTIN_REWARDS or user_fn, _p(path, "type"), self.type,
              f"{', '.join(BUILTIN_REWARDS)} or a user function 'module:function'")
        check(isinstance(self.params, dict), _p(path, "params"), self.params, "a mapping")
