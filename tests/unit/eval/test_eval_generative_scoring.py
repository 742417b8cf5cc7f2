"""Generative exact match scored with fake completions: built-in tasks by their `verify`,
GSM8K rows by the math_answer reward's verdict (one shared normalisation)."""

import json

import pytest

from tunefleet.eval.generative import score_completions
from tunefleet.eval.suites import Example, Suite, parse_suites
from tunefleet.rewards import REWARDS, RewardInput
from tunefleet.rewards.mathnorm import math_answer_correct


def test_arith_suite_uses_the_task_verifier():
    suite = Suite("arith_l1", "generative", (Example("a", "What is 3 + 4?", "7"), Example("b", "2+2?", "4"),
                                             Example("c", "5+5?", "10")), task="arith")
    metrics, rows = score_completions(suite, ["3 + 4 = 7", "The answer is \\boxed{5}.", "It is ten"])
    assert metrics == {"exact_match": pytest.approx(1 / 3), "n": 3}
    assert [r["score"] for r in rows] == [1.0, 0.0, 0.0]
    assert [r["extracted"] for r in rows] == ["7", "5", ""]
    assert rows[0]["input"] == "What is 3 + 4?" and rows[1]["output"] == "The answer is \\boxed{5}."


def test_gsm8k_suite_uses_math_answer_normalisation(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [{"question": "q1", "answer": "work\n#### 1,200"}, {"question": "q2", "answer": "#### 0.5"},
            {"question": "q3", "answer": "#### 18"}, {"question": "q4", "answer": "#### 7"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (suite,) = parse_suites([f"gsm8k:{path}"])
    outs = ["So she has $1200.", "The answer is \\boxed{\\frac{1}{2}}", "#### 18 eggs", "About 8, or 7? I say 8"]
    metrics, scored = score_completions(suite, outs)
    assert [r["score"] for r in scored] == [1.0, 1.0, 1.0, 0.0]
    assert metrics["exact_match"] == 0.75 and scored[0]["reference"] == "1,200"


@pytest.mark.parametrize("completion, answer", [
    ("So she has $1200.", "work\n#### 1,200"), ("\\boxed{\\frac{1}{2}}", "#### 0.5"), ("Paris", "Paris"),
    ("#### 18 eggs", "#### 18"), ("I think 8", "#### 7"), ("", "#### 3"), ("5", "5"),
])
def test_eval_and_the_rl_reward_agree(completion, answer):
    """The RL reward (math_answer) and the eval verdict come from the same function."""
    reward = REWARDS["math_answer"]({}, None)([RewardInput("p", completion, answer)])[0]
    assert reward == float(math_answer_correct(completion, answer))


def test_completion_count_must_match():
    suite = Suite("s", "generative", (Example("a", "p", "1"),), task="arith")
    with pytest.raises(ValueError, match="2 completions for 1 examples"):
        score_completions(suite, ["1", "2"])
