"""Build the weighted reward of a run from its `rewards:` specs.

`REWARDS` maps each built-in name to its factory (a test keeps its keys equal to
`BUILTIN_REWARDS`). A spec whose type has a ':' is a user function "package.module:function",
called per item as `fn(inp: RewardInput, **params) -> float`.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunefleet.config import RewardSpec
from tunefleet.rewards import builtin
from tunefleet.rewards.base import RewardFactory, RewardFn, RewardInput, is_number

REWARDS: dict[str, RewardFactory] = {
    "task": builtin.task_reward,
    "exact_match": builtin.exact_match_reward,
    "math_answer": builtin.math_answer_reward,
    "format": builtin.format_reward,
    "length_penalty": builtin.length_penalty_reward,
    "reward_model": builtin.reward_model_reward,
    "code_exec": builtin.code_exec_reward,
}


@dataclass(frozen=True)
class Component:
    """One weighted term of a `CombinedReward`; `name` is unique within it."""

    name: str
    weight: float
    fn: RewardFn


class CombinedReward:
    """The weighted sum of its components: `reward(inputs) -> (totals, {name: raw values})`."""

    def __init__(self, components: Sequence[Component]):
        self.components = tuple(components)

    @property
    def names(self) -> tuple[str, ...]:
        """The component names, in spec order (the keys of the second return value)."""
        return tuple(c.name for c in self.components)

    def __call__(self, inputs: list[RewardInput]) -> tuple[list[float], dict[str, list[float]]]:
        """Per input the weighted total, and per component its unweighted values."""
        inputs = list(inputs)
        parts = {c.name: _checked(c, c.fn(inputs), len(inputs)) for c in self.components}
        totals = [math.fsum(c.weight * parts[c.name][i] for c in self.components) for i in range(len(inputs))]
        return totals, parts


def _checked(component: Component, values: Any, n: int) -> list[float]:
    """`values` as floats; ValueError naming the component if they are not n finite numbers."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise ValueError(f"reward {component.name!r} returned a non-number: {e}") from None
    if len(out) != n:
        raise ValueError(f"reward {component.name!r} returned {len(out)} values for {n} inputs")
    bad = next((v for v in out if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"reward {component.name!r} returned a non-finite value: {bad}")
    return out


def _import_user_fn(type_: str) -> Any:
    """The callable named by "package.module:function" (the function may be dotted)."""
    module_name, attr = (part.strip() for part in type_.split(":", 1))
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {type_!r}: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward {type_!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {type_!r}: {attr!r} is not callable")
    return obj


def _check_call(type_: str, fn: Any, params: dict) -> None:
    """ValueError now if `fn(inp, **params)` could not be called (e.g. a misspelt param)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some C functions have no signature: they fail at call time instead
    try:
        signature.bind(None, **params)
    except TypeError as e:
        raise ValueError(f"reward {type_!r}: params {sorted(params)} do not fit {signature} ({e})") from None


def user_reward(type_: str, params: dict) -> tuple[str, RewardFn]:
    """(component name, batched fn) for a user function "package.module:function"."""
    fn = _import_user_fn(type_)
    _check_call(type_, fn, params)
    name = getattr(fn, "__name__", None) or type_.split(":", 1)[1].strip().rsplit(".", 1)[-1]
    return name, lambda inputs: [fn(inp, **params) for inp in inputs]


def _unique(name: str, taken: set[str]) -> str:
    # "format", "format_1", "format_2", ...: the first keeps the plain name.
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def _component(spec: RewardSpec, task_name: str | None, taken: set[str]) -> Component:
    if not is_number(spec.weight) or not math.isfinite(spec.weight):
        raise ValueError(f"reward {spec.type!r}: weight must be a finite number, got {spec.weight!r}")
    if not isinstance(spec.params, dict):
        raise ValueError(f"reward {spec.type!r}: params must be a mapping, got {spec.params!r}")
    if ":" in spec.type:
        name, fn = user_reward(spec.type, dict(spec.params))
    elif spec.type in REWARDS:
        name, fn = spec.type, REWARDS[spec.type](dict(spec.params), task_name)
    else:
        raise ValueError(f"unknown reward {spec.type!r}; built-ins: {', '.join(REWARDS)}, "
                         f"or a user function 'package.module:function'")
    return Component(_unique(name, taken), float(spec.weight), fn)


def build_reward(specs: Sequence[RewardSpec], task_name: str | None) -> CombinedReward:
    """The weighted sum of `specs`; every param is checked here, before training starts.

    `task_name` is the run's built-in task (for the `task` reward), if any."""
    if not specs:
        raise ValueError("rewards: give at least one reward")
    taken: set[str] = set()
    return CombinedReward([_component(spec, task_name, taken) for spec in specs])
