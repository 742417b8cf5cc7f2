"""The `rewards:` list of online RL: weighted reward functions. Imports neither torch nor ray.

Each built-in reward declares its params here (REWARD_PARAMS), so `tunefleet validate`
rejects a misspelt param, a wrong type or a regex that does not compile before any worker
or engine starts. The factories in tunefleet/rewards/builtin.py take their defaults from
the same table (a test keeps the two in step) and check again when they are built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tunefleet.config.loader import ConfigError, check, did_you_mean
from tunefleet.config.loader import dotted as _p

_REQUIRED = object()  # the default of a param that must be given


@dataclass(frozen=True)
class Param:
    """One param of a built-in reward. `regex` is a string that must compile; a param
    whose default is None also takes null; `gt` / `ge` bound numbers."""

    kind: Literal["bool", "int", "number", "str", "regex", "choice"]
    default: Any = _REQUIRED
    gt: float | None = None
    ge: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any, path: str) -> None:
        """Raise ConfigError naming `path` unless `value` fits."""
        if value is None and self.default is None:
            return
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(path, f"bad value {value!r}; allowed: {' | '.join(map(repr, self.choices))}"
                                  f"{did_you_mean(str(value), self.choices)}")
            return
        check(_KIND_OK[self.kind](value) and self._in_bounds(value), path, value, self._allowed())
        if self.kind == "regex":
            try:
                re.compile(value)
            except re.error as e:
                raise ConfigError(path, f"bad value {value!r}: not a valid regex ({e})") from None

    def _in_bounds(self, value: Any) -> bool:
        return (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)

    def _allowed(self) -> str:
        bounds = "".join(f" {op} {b:g}" for op, b in ((">", self.gt), (">=", self.ge)) if b is not None)
        return _KIND_TEXT[self.kind] + bounds + (" or null" if self.default is None else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML `true` is a bool, which Python counts as an int


_KIND_OK: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "int": _is_int,
    "number": lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v),
    "str": lambda v: isinstance(v, str),
    "regex": lambda v: isinstance(v, str),
}
_KIND_TEXT = {"bool": "true or false", "int": "an int", "number": "a number", "str": "a string",
              "regex": "a regex string"}

_LIMIT = Param("int", ge=1)  # a sandbox limit; the default is set per param below
# Built-in reward functions and their params (tunefleet/rewards/registry.py implements
# exactly these; tests keep them in step). Anything else must be a user function
# "package.module:function", whose params are its own keyword arguments: not checked here.
REWARD_PARAMS: dict[str, dict[str, Param]] = {
    "task": {},
    "exact_match": {"normalize": Param("bool", True)},
    "math_answer": {"fallback_last_number": Param("bool", True)},
    "format": {"pattern": Param("regex"), "mode": Param("choice", "search", choices=("search", "fullmatch"))},
    "length_penalty": {"target_tokens": Param("int", ge=0), "scale_tokens": Param("int", None, gt=0)},
    "reward_model": {"path": Param("str"), "base": Param("str", None), "batch_size": Param("int", 8, ge=1),
                     "dtype": Param("choice", "float32", choices=("float32", "bfloat16"))},
    "code_exec": {"tests_field": Param("str", "tests"), "timeout_s": Param("number", 5, gt=0),
                  **{name: Param("int", default, ge=1) for name, default in
                     (("cpu_s", 2), ("memory_mb", 256), ("max_workers", 2), ("max_output_bytes", 64 * 1024))}},
}
BUILTIN_REWARDS = tuple(REWARD_PARAMS)


def _length_penalty_scale(params: dict, path: str) -> None:
    # scale_tokens defaults to target_tokens, which must then be > 0 to divide by.
    if params.get("scale_tokens") is None and params.get("target_tokens") == 0:
        raise ConfigError(_p(path, "scale_tokens"), "missing; it defaults to target_tokens, "
                          "so set it when target_tokens is 0")


# Checks that span more than one param of a reward.
_JOINT_CHECKS: dict[str, Callable[[dict, str], None]] = {"length_penalty": _length_penalty_scale}


def check_reward_params(reward: str, params: dict, path: str) -> None:
    """Raise ConfigError naming `path.<param>` for an unknown, missing or bad param of
    built-in `reward` (`path` is the spec's `params`, e.g. `rewards[0].params`)."""
    schema = REWARD_PARAMS[reward]
    for name in params:
        if name not in schema:
            allowed = ", ".join(schema) or f"none: reward {reward!r} takes no params"
            raise ConfigError(_p(path, str(name)), f"unknown param{did_you_mean(str(name), schema)}; "
                              f"allowed params: {allowed}")
    for name, spec in schema.items():
        if name in params:
            spec.check(params[name], _p(path, name))
        elif spec.required:
            raise ConfigError(_p(path, name), f"missing required param of reward {reward!r}")
    joint = _JOINT_CHECKS.get(reward)
    if joint is not None:
        joint(params, path)


def _is_user_function(type_: str) -> bool:
    """True for "package.module:function" (the function may be dotted too)."""
    module, sep, fn = type_.partition(":")
    return bool(sep) and all(part.isidentifier() for part in (*module.strip().split("."), *fn.strip().split(".")))


@dataclass(frozen=True)
class RewardSpec:
    """One term of the reward: `weight * fn(sample)`. `type` is a built-in name or a user
    function given as `module:function`; `params` are passed to it as keyword arguments."""

    type: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)

    def validate(self, path: str) -> None:
        check(self.type in BUILTIN_REWARDS or _is_user_function(self.type), _p(path, "type"), self.type,
              f"{', '.join(BUILTIN_REWARDS)} or a user function 'module:function'")
        check(math.isfinite(self.weight), _p(path, "weight"), self.weight, "a finite number")
        check(isinstance(self.params, dict), _p(path, "params"), self.params, "a mapping")
        if self.type in REWARD_PARAMS:
            check_reward_params(self.type, self.params, _p(path, "params"))
