"""The built-in rewards on hand-worked inputs (the code sandbox has its own file)."""

import sys
import types

import pytest

from tunefleet.rewards import REWARDS, RewardInput
from tunefleet.rewards.builtin import extract_code


def score(type_, completion, answer=None, params=None, task_name=None, **kw):
    fn = REWARDS[type_](params or {}, task_name)
    return fn([RewardInput("a prompt", completion, answer, **kw)])[0]


# ----------------------------------------------------------------------------- task

def test_task_arith_via_meta():
    assert score("task", "3 + 4 = 7", "7", meta={"task": "arith"}) == 1.0
    assert score("task", "3 + 4 = 8", "7", meta={"task": "arith"}) == 0.0
    assert score("task", "So \\boxed{12} apples.", "12", meta={"task": "arith"}) == 1.0


def test_task_reverse_via_task_name():
    assert score("task", "Reversed: stone, river, apple", "stone, river, apple", task_name="reverse") == 1.0
    assert score("task", "apple, river, stone", "stone, river, apple", task_name="reverse") == 0.0


def test_task_meta_overrides_the_run_task():
    # "7" is no word list, so only the arith verifier accepts it.
    assert score("task", "7", "7", task_name="reverse", meta={"task": "arith"}) == 1.0


def test_task_errors():
    with pytest.raises(ValueError, match="no meta\\['task'\\]"):
        score("task", "7", "7")
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        REWARDS["task"]({}, "chess")
    with pytest.raises(ValueError, match="needs an answer"):
        score("task", "7", None, task_name="arith")


# ---------------------------------------------------------------------- exact_match

def test_exact_match_normalises_by_default():
    assert score("exact_match", "  Hello \n  World ", "hello world") == 1.0
    assert score("exact_match", "hello world!", "hello world") == 0.0


def test_exact_match_without_normalisation():
    raw = {"normalize": False}
    assert score("exact_match", " Hello World", "hello world", raw) == 0.0
    assert score("exact_match", "Hello World", "Hello World", raw) == 1.0
    with pytest.raises(ValueError, match="'exact_match'.*'normalize'"):
        REWARDS["exact_match"]({"normalize": "yes"}, None)


# ---------------------------------------------------------------------- math_answer

@pytest.mark.parametrize("completion, gold", [
    ("She has 1234 now.\n#### 1,234", "1234"),
    ("\\boxed{1234}", "Natalia sold 48/2 = 24 clips...\n#### 1,234"),
    ("so x = \\boxed{\\frac{1}{2}}", "0.5"),
    ("so x = \\boxed{\\frac{1}{2}}", "1/2"),
    ("\\boxed{\\dfrac{3}{4}}", "0.75"),
    ("It costs $5.00.", "5"),
    ("#### $5.50", "5.5"),
    ("About 50% of them.", "50"),
    ("#### 72 clips", "72"),
    ("3 + 4 = \\boxed{7}, and 9 is wrong", "7"),  # the boxed answer beats the last number
    ("The answer is -3.", "-3"),
    ("\\boxed{Paris}", "paris"),  # not a number: normalised strings
])
def test_math_answer_matches(completion, gold):
    assert score("math_answer", completion, gold) == 1.0


@pytest.mark.parametrize("completion, gold", [
    ("#### 1,235", "1234"),
    ("\\boxed{\\frac{1}{3}}", "0.333"),  # exact comparison: no float fuzz
    ("The answer is 7, not 9", "7"),  # the last number wins without #### or \boxed
    ("\\boxed{Rome}", "Paris"),
    ("no idea", "5"),
])
def test_math_answer_rejects(completion, gold):
    assert score("math_answer", completion, gold) == 0.0


def test_math_answer_last_number_fallback_on_and_off():
    off = {"fallback_last_number": False}
    assert score("math_answer", "I think it is 7", "7") == 1.0
    assert score("math_answer", "I think it is 7", "7", off) == 0.0
    assert score("math_answer", "#### 7", "7", off) == 1.0
    assert score("math_answer", "7", "7", off) == 1.0  # the whole completion is the answer


def test_math_answer_needs_an_answer():
    with pytest.raises(ValueError, match="'math_answer' needs an answer"):
        score("math_answer", "#### 7", None)


# --------------------------------------------------------------------------- format

def test_format_search_vs_fullmatch():
    text = "<think>hmm</think> <answer>7</answer>"
    assert score("format", text, params={"pattern": r"<answer>\d+</answer>"}) == 1.0
    assert score("format", text, params={"pattern": r"<answer>\d+</answer>", "mode": "fullmatch"}) == 0.0
    full = {"pattern": r"<think>.*</think> <answer>\d+</answer>", "mode": "fullmatch"}
    assert score("format", text, params=full) == 1.0
    assert score("format", "no tags", params={"pattern": "<answer>"}) == 0.0


def test_format_bad_params():
    with pytest.raises(ValueError, match="'format'.*'pattern' is not a valid regex"):
        REWARDS["format"]({"pattern": "(unclosed"}, None)
    with pytest.raises(ValueError, match="'format'.*'pattern' is required"):
        REWARDS["format"]({}, None)
    with pytest.raises(ValueError, match="'mode'"):
        REWARDS["format"]({"pattern": "x", "mode": "match"}, None)


# ------------------------------------------------------------------- length_penalty

@pytest.mark.parametrize("tokens, expected", [(0, 0.0), (5, 0.0), (10, 0.0), (15, -0.5), (20, -1.0), (500, -1.0)])
def test_length_penalty(tokens, expected):
    assert score("length_penalty", "", params={"target_tokens": 10}, num_tokens=tokens) == expected


def test_length_penalty_scale():
    params = {"target_tokens": 10, "scale_tokens": 40}
    assert score("length_penalty", "", params=params, num_tokens=20) == -0.25
    assert score("length_penalty", "", params=params, num_tokens=50) == -1.0


@pytest.mark.parametrize("params, bad", [({}, "target_tokens"), ({"target_tokens": 0}, "scale_tokens"),
                                         ({"target_tokens": True}, "target_tokens"),
                                         ({"target_tokens": 10, "scale_tokens": -1}, "scale_tokens")])
def test_length_penalty_bad_params(params, bad):
    with pytest.raises(ValueError, match=f"'length_penalty'.*'{bad}'"):
        REWARDS["length_penalty"](params, None)


# --------------------------------------------------------------------- reward_model

def test_reward_model_builds_the_scorer_once_lazily(tmp_path, monkeypatch):
    made = []

    class FakeScorer:
        def __init__(self, path, base, dtype):
            made.append((path, base, dtype))

        def score(self, prompts, responses, batch_size):
            return [float(len(r)) + batch_size / 100 for r in responses]

    fake = types.ModuleType("tunefleet.eval.reward_scorer")
    fake.RewardScorer = FakeScorer
    monkeypatch.setitem(sys.modules, "tunefleet.eval.reward_scorer", fake)
    fn = REWARDS["reward_model"]({"path": str(tmp_path), "batch_size": 4}, None)
    assert made == []  # nothing loads before the first batch
    assert fn([RewardInput("p", "abc"), RewardInput("p", "a")]) == [3.04, 1.04]
    assert fn([RewardInput("p", "ab")]) == [2.04]
    assert made == [(str(tmp_path), None, "float32")]


def test_reward_model_bad_params(tmp_path):
    with pytest.raises(ValueError, match="'reward_model'.*'path'"):
        REWARDS["reward_model"]({"path": str(tmp_path / "missing")}, None)
    with pytest.raises(ValueError, match="'dtype'"):
        REWARDS["reward_model"]({"path": str(tmp_path), "dtype": "int8"}, None)
    with pytest.raises(ValueError, match="'batch_size'"):
        REWARDS["reward_model"]({"path": str(tmp_path), "batch_size": 0}, None)


# ----------------------------------------------------------------- shared behaviour

@pytest.mark.parametrize("type_", sorted(REWARDS))
def test_unknown_param_names_reward_and_param(type_):
    with pytest.raises(ValueError, match=f"reward '{type_}': unknown param 'bogus'"):
        REWARDS[type_]({"bogus": 1}, None)


def test_extract_code_prefers_the_last_python_block():
    text = "Try:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\n```text\nnot code\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("def f(): return 1") == "def f(): return 1"
