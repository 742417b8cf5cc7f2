"""The built-in reward factories (the names in `tunefleet.config.rewards.BUILTIN_REWARDS`).

Each factory `f(params, task_name)` checks its params at build time and returns a batched
`fn(inputs) -> list[float]`. Rewards that compare with a gold answer raise ValueError at
call time for a row without one: a silent 0 would look like a model that never learns.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunefleet.config.rewards import REWARD_PARAMS
from tunefleet.data.tasks import Task, get_task
from tunefleet.rewards.base import (
    RewardFn,
    RewardInput,
    check_param,
    is_int,
    is_number,
    need_answers,
    required,
    take_params,
)
from tunefleet.rewards.mathnorm import math_answer_correct, normalise_text
from tunefleet.rewards.sandbox import SandboxLimits, check_isolation, run_tests


def _defaults(reward: str) -> dict:
    """The reward's params with their defaults, as config/rewards.py declares them (the
    table `tunefleet validate` checks against), for `take_params`."""
    return {name: required() if p.required else p.default for name, p in REWARD_PARAMS[reward].items()}


def _as_reward(ok: bool) -> float:
    return 1.0 if ok else 0.0


def _lookup_task(name: str) -> Task:
    try:
        return get_task(name)
    except KeyError as e:
        raise ValueError(f"reward 'task': {e.args[0]}") from None


def task_reward(params: dict, task_name: str | None) -> RewardFn:
    """1.0 when the built-in task's verifier accepts the completion, else 0.0. The task is
    the row's `meta["task"]`, else `task_name` (the training task)."""
    take_params("task", params, _defaults("task"))
    if task_name is not None:
        _lookup_task(task_name)

    def fn(inputs: list[RewardInput]) -> list[float]:
        need_answers("task", inputs)
        out = []
        for inp in inputs:
            name = inp.meta.get("task") or task_name
            if not name:
                raise ValueError("reward 'task': the row has no meta['task'] and the run has no task")
            out.append(_as_reward(_lookup_task(name).verify(inp.completion, inp.answer)))
        return out

    return fn


def exact_match_reward(params: dict, task_name: str | None) -> RewardFn:
    """1.0 when completion == answer, after strip + whitespace collapse + casefold unless
    `normalize: false`."""
    p = take_params("exact_match", params, _defaults("exact_match"))
    check_param(isinstance(p["normalize"], bool), "exact_match", "normalize", p["normalize"], "true or false")
    norm = normalise_text if p["normalize"] else (lambda text: text)

    def fn(inputs: list[RewardInput]) -> list[float]:
        need_answers("exact_match", inputs)
        return [_as_reward(norm(inp.completion) == norm(inp.answer)) for inp in inputs]

    return fn


def math_answer_reward(params: dict, task_name: str | None) -> RewardFn:
    """1.0 when the final answer (`#### N`, else last `\\boxed{}`, else optionally the last
    number) equals the gold answer (a GSM8K `... #### N` string or a plain value)."""
    p = take_params("math_answer", params, _defaults("math_answer"))
    fallback = p["fallback_last_number"]
    check_param(isinstance(fallback, bool), "math_answer", "fallback_last_number", fallback, "true or false")

    def score(inp: RewardInput) -> float:
        # The one shared verdict (tunefleet eval's GSM8K suites use it too).
        return _as_reward(math_answer_correct(inp.completion, inp.answer, fallback))

    def fn(inputs: list[RewardInput]) -> list[float]:
        need_answers("math_answer", inputs)
        return [score(inp) for inp in inputs]

    return fn


def format_reward(params: dict, task_name: str | None) -> RewardFn:
    """1.0 when regex `pattern` matches the completion: anywhere (`mode: search`) or the
    whole of it (`mode: fullmatch`). Use `(?s)` for `.` to cross lines."""
    p = take_params("format", params, _defaults("format"))
    check_param(isinstance(p["pattern"], str), "format", "pattern", p["pattern"], "a regex string")
    check_param(p["mode"] in ("search", "fullmatch"), "format", "mode", p["mode"], "'search' or 'fullmatch'")
    try:
        regex = re.compile(p["pattern"])
    except re.error as e:
        raise ValueError(f"reward 'format': param 'pattern' is not a valid regex ({e}): {p['pattern']!r}") from None
    match = regex.search if p["mode"] == "search" else regex.fullmatch
    return lambda inputs: [_as_reward(match(inp.completion) is not None) for inp in inputs]


def length_penalty_reward(params: dict, task_name: str | None) -> RewardFn:
    """-min(1, max(0, num_tokens - target_tokens) / scale_tokens): 0 up to `target_tokens`,
    then falling linearly to -1 at `target_tokens + scale_tokens` tokens (and staying
    there), so a long answer costs at most one unit of weight."""
    p = take_params("length_penalty", params, _defaults("length_penalty"))
    target, scale = p["target_tokens"], p["scale_tokens"]
    check_param(is_int(target) and target >= 0, "length_penalty", "target_tokens", target, "an int >= 0")
    scale = target if scale is None else scale
    check_param(is_int(scale) and scale > 0, "length_penalty", "scale_tokens", scale,
                "an int > 0 (it defaults to target_tokens, so set it when target_tokens is 0)")
    return lambda inputs: [-min(1.0, max(0, inp.num_tokens - target) / scale) for inp in inputs]


# Model dtypes `tunefleet.models.registry.DTYPES` loads; not imported: that would load torch.
_RM_DTYPES = ("float32", "bfloat16")


def reward_model_reward(params: dict, task_name: str | None) -> RewardFn:
    """A trained reward model's score of (prompt, completion). The model (`path`: an
    exported run's model/ or adapter/ dir; `base` for an adapter) loads on first use."""
    p = take_params("reward_model", params, _defaults("reward_model"))
    check_param(isinstance(p["path"], str) and Path(p["path"]).is_dir(), "reward_model", "path",
                p["path"], "an existing directory")
    check_param(p["base"] is None or isinstance(p["base"], str), "reward_model", "base", p["base"], "a model name")
    check_param(is_int(p["batch_size"]) and p["batch_size"] >= 1, "reward_model", "batch_size",
                p["batch_size"], "an int >= 1")
    check_param(p["dtype"] in _RM_DTYPES, "reward_model", "dtype", p["dtype"], f"one of {_RM_DTYPES}")
    scorer, lock = [], threading.Lock()

    def fn(inputs: list[RewardInput]) -> list[float]:
        with lock:  # load once, even when two threads score the first batch together
            if not scorer:
                from tunefleet.eval.reward_scorer import RewardScorer  # imports torch

                scorer.append(RewardScorer(p["path"], p["base"], p["dtype"]))
        return scorer[0].score([i.prompt for i in inputs], [i.completion for i in inputs], p["batch_size"])

    return fn


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_FENCES = ("python", "py", "python3", "")


def extract_code(completion: str) -> str:
    """The last ```python (or untagged ```) fenced block, else the whole completion."""
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in _PYTHON_FENCES]
    return blocks[-1] if blocks else completion


_CODE_DEFAULTS = {"tests_field": "tests", "timeout_s": 5, "cpu_s": 2, "memory_mb": 256,
                  "max_workers": 2, "max_output_bytes": 64 * 1024}


def code_exec_reward(params: dict, task_name: str | None) -> RewardFn:
    """1.0 when the row's `meta[tests_field]` (e.g. asserts) run through against the
    completion's code within the limits, else 0.0: the code runs in one sandbox, and only
    once its top level has returned do the tests run, in another (sandbox.run_tests), so
    no exit, patch or forged output of the code can pass them. A row without that field
    is an error; give it "" to reward code whose top level merely runs. Raises
    SandboxUnavailable here, at build time, if the sandbox cannot isolate on this machine."""
    p = take_params("code_exec", params, _CODE_DEFAULTS)
    check_param(isinstance(p["tests_field"], str), "code_exec", "tests_field", p["tests_field"], "a string")
    check_param(is_number(p["timeout_s"]) and p["timeout_s"] > 0, "code_exec", "timeout_s", p["timeout_s"], "> 0")
    for name in ("cpu_s", "memory_mb", "max_workers", "max_output_bytes"):
        check_param(is_int(p[name]) and p[name] >= 1, "code_exec", name, p[name], "an int >= 1")
    limits = SandboxLimits(float(p["timeout_s"]), p["cpu_s"], p["memory_mb"], p["max_output_bytes"])
    field = p["tests_field"]
    check_isolation(limits)

    def job(inp: RewardInput) -> tuple[str, str]:
        if field not in inp.meta:
            raise ValueError(f"reward 'code_exec': the row has no meta[{field!r}] (the tests to run)")
        return extract_code(inp.completion), str(inp.meta[field])

    def fn(inputs: list[RewardInput]) -> list[float]:
        jobs = [job(inp) for inp in inputs]
        with ThreadPoolExecutor(max_workers=p["max_workers"], thread_name_prefix="code-exec") as pool:
            return [_as_reward(r.ok) for r in pool.map(lambda j: run_tests(*j, limits), jobs)]

    return fn
