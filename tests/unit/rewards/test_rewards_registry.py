"""build_reward: weighted sums, component names, user functions, build-time errors."""

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tunefleet.config import BUILTIN_REWARDS, RewardSpec
from tunefleet.config.rewards import REWARD_PARAMS
from tunefleet.rewards import REWARDS, RewardInput, build_reward, builtin
from tunefleet.rewards.base import required

PKG = Path(__file__).resolve().parents[3] / "platform" / "tunefleet" / "rewards"


# Referenced below as "test_rewards_registry:..." (pytest puts this folder on sys.path).
def my_reward(inp: RewardInput, bonus: float = 0.0) -> float:
    return len(inp.completion) + bonus


def nan_reward(inp: RewardInput) -> float:
    return math.nan


NOT_CALLABLE = 3


def test_registry_implements_exactly_the_config_builtins():
    assert set(REWARDS) == set(BUILTIN_REWARDS)


class _Declared(Exception):
    pass


def test_factories_take_exactly_the_params_the_config_checks(monkeypatch):
    """`tunefleet validate` checks params against config/rewards.py's REWARD_PARAMS; each
    factory must accept the same names, with the same defaults and the same required ones."""
    seen = {}

    def spy(reward, params, defaults):
        seen[reward] = dict(defaults)
        raise _Declared

    monkeypatch.setattr(builtin, "take_params", spy)
    for factory in REWARDS.values():
        with pytest.raises(_Declared):
            factory({}, None)
    assert set(REWARD_PARAMS) == set(REWARDS)
    for name, declared in REWARD_PARAMS.items():
        assert set(seen[name]) == set(declared), name
        for param, spec in declared.items():
            expected = required() if spec.required else spec.default
            assert seen[name][param] is expected or seen[name][param] == expected, (name, param)


def test_weighted_sum_and_raw_components():
    reward = build_reward([
        RewardSpec("format", 0.5, {"pattern": "<answer>"}),
        RewardSpec("length_penalty", 2.0, {"target_tokens": 10}),
    ], None)
    inputs = [RewardInput("p", "<answer>7", num_tokens=5), RewardInput("p", "7", num_tokens=15)]
    totals, parts = reward(inputs)
    assert parts == {"format": [1.0, 0.0], "length_penalty": [0.0, -0.5]}
    assert totals == [0.5, -1.0]


def test_task_reward_uses_the_run_task():
    totals, parts = build_reward([RewardSpec("task")], "arith")([RewardInput("2 + 2?", "4", "4")])
    assert totals == [1.0] and parts == {"task": [1.0]}


def test_repeated_types_get_unique_names():
    reward = build_reward([
        RewardSpec("format", 1.0, {"pattern": "a"}),
        RewardSpec("format", 1.0, {"pattern": "b"}),
        RewardSpec("exact_match", 1.0),
        RewardSpec("format", 1.0, {"pattern": "c"}),
    ], None)
    assert reward.names == ("format", "format_1", "exact_match", "format_2")
    totals, parts = reward([RewardInput("p", "ab", "ab")])
    assert parts == {"format": [1.0], "format_1": [1.0], "exact_match": [1.0], "format_2": [0.0]}
    assert totals == [3.0]


def test_user_function_by_module_path():
    reward = build_reward([
        RewardSpec("test_rewards_registry:my_reward", 0.5, {"bonus": 1.0}),
        RewardSpec("test_rewards_registry:my_reward", 1.0),
    ], None)
    assert reward.names == ("my_reward", "my_reward_1")
    totals, parts = reward([RewardInput("p", "abc"), RewardInput("p", "")])
    assert parts == {"my_reward": [4.0, 1.0], "my_reward_1": [3.0, 0.0]}
    assert totals == [5.0, 0.5]


@pytest.mark.parametrize("spec, message", [
    (RewardSpec("format", 1.0, {"pattern": "x", "flags": 2}), "reward 'format': unknown param 'flags'"),
    (RewardSpec("format", 1.0, {"pattern": "[a-"}), "not a valid regex"),
    (RewardSpec("no_such_module_tf:fn"), "cannot import module 'no_such_module_tf'"),
    (RewardSpec("test_rewards_registry:missing"), "has no attribute 'missing'"),
    (RewardSpec("test_rewards_registry:NOT_CALLABLE"), "'NOT_CALLABLE' is not callable"),
    (RewardSpec("test_rewards_registry:my_reward", 1.0, {"bonsu": 1}), "do not fit"),
    (RewardSpec("nope"), "unknown reward 'nope'"),
    (RewardSpec("format", math.inf, {"pattern": "x"}), "weight must be a finite number"),
])
def test_bad_specs_fail_at_build_time(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", "\\[")):
        build_reward([spec], None)


def test_no_specs_is_an_error():
    with pytest.raises(ValueError, match="at least one reward"):
        build_reward([], None)


def test_non_finite_reward_names_the_component():
    reward = build_reward([RewardSpec("exact_match"), RewardSpec("test_rewards_registry:nan_reward")], None)
    with pytest.raises(ValueError, match="'nan_reward' returned a non-finite value"):
        reward([RewardInput("p", "a", "a")])


def test_rewards_never_import_ray_or_vllm():
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & {"ray", "vllm"}, f"{path}: imports {names}"


def test_importing_and_building_rewards_does_not_load_torch(tmp_path):
    code = ("import sys\nfrom tunefleet.config import RewardSpec\nfrom tunefleet.rewards import build_reward\n"
            f"build_reward([RewardSpec('reward_model', 1.0, {{'path': {str(tmp_path)!r}}}),"
            " RewardSpec('code_exec')], None)\n"
            "bad = [m for m in ('torch', 'ray', 'vllm') if m in sys.modules]\nassert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
