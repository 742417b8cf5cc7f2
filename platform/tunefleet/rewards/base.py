"""What a reward function sees and how its params are checked.

A reward function is batched, `fn(inputs: list[RewardInput]) -> list[float]`, because the
reward model and the code sandbox are much cheaper per batch than per item. A factory
builds one from a `RewardSpec`'s params, `factory(params, task_name) -> fn`, and checks
every param when it is called, so a typo fails before training starts, not mid-run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RewardInput:
    """One generated completion to score.

    - prompt: the user prompt text (before any chat template).
    - completion: the generated text.
    - answer: gold answer / reference, if the row has one.
    - meta: row extras, e.g. {"task": "arith"} or {"tests": "assert f(2) == 4"}.
    - num_tokens: completion length in tokens.
    """

    prompt: str
    completion: str
    answer: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    num_tokens: int = 0


RewardFn = Callable[[list[RewardInput]], list[float]]
RewardFactory = Callable[[dict, "str | None"], RewardFn]

_REQUIRED = object()  # marks a param without a default in `take_params`


def required() -> Any:
    """The default to give a param that must be set (see `take_params`)."""
    return _REQUIRED


def take_params(reward: str, params: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict:
    """`params` merged over `defaults`; ValueError names the reward and the bad param if
    one is unknown or a `required()` one is missing."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"reward {reward!r}: unknown param {unknown[0]!r} (known params: {known})")
    merged = {**defaults, **params}
    for name, value in merged.items():
        if value is _REQUIRED:
            raise ValueError(f"reward {reward!r}: param {name!r} is required")
    return merged


def check_param(ok: bool, reward: str, name: str, value: Any, expected: str) -> None:
    """Raise ValueError naming the reward and the param unless `ok`."""
    if not ok:
        raise ValueError(f"reward {reward!r}: param {name!r} must be {expected}, got {value!r}")


def is_int(value: Any) -> bool:
    """True for a real int (a YAML `true` is a bool, which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def need_answers(reward: str, inputs: Iterable[RewardInput]) -> None:
    """Raise ValueError if any input lacks the gold answer that `reward` compares with."""
    for inp in inputs:
        if inp.answer is None:
            raise ValueError(f"reward {reward!r} needs an answer, but a row has none "
                             f"(prompt starts {inp.prompt[:60]!r})")
