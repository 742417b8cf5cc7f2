"""Judges on hand-worked inputs: reward-backed ones with thresholds, and llm_judge with a
fake `generate` (no model, no Ray)."""

from dataclasses import dataclass, field

import pytest

from tunefleet.rewards import REWARDS, RewardInput
from tunefleet.rewards.judges import (
    DEFAULT_TEMPLATE,
    DEFAULT_VERDICT_REGEX,
    JUDGES,
    Verdicts,
    build_judge,
)


@dataclass(frozen=True)
class Spec:
    """A stand-in for config/selfplay.py's JudgeSpec."""

    type: str
    threshold: float = 0.5
    params: dict = field(default_factory=dict)
    template: str = DEFAULT_TEMPLATE
    verdict_regex: str = DEFAULT_VERDICT_REGEX


def inp(completion, answer, prompt="What is 5 + 7?"):
    return RewardInput(prompt, completion, answer)


def test_judge_keys():
    from tunefleet.config.selfplay import JUDGE_TYPES
    from tunefleet.rewards.registry import REWARDS

    assert set(JUDGES) == {"exact_match", "math_answer", "reward_model", "llm_judge"} | set(REWARDS)
    assert tuple(JUDGES) == JUDGE_TYPES  # what the config accepts is what is registered


def test_math_answer_accepts_a_sentence_that_exact_match_rejects():
    inputs = [inp("The answer is 12", "12"), inp("The answer is 13", "12"), inp("12", "12")]
    math = build_judge(Spec("math_answer"))(inputs)
    exact = build_judge(Spec("exact_match"))(inputs)
    assert math == Verdicts((1.0, 0.0, 1.0), (True, False, True), 0)
    assert exact == Verdicts((0.0, 0.0, 1.0), (False, False, True), 0)


def test_math_answer_reads_a_gsm8k_gold():
    judge = build_judge(Spec("math_answer"))
    v = judge([inp("5 + 7 = 12, so #### 12", "Five and seven make twelve.\n#### 12")])
    assert v.accepted == (True,)


def test_exact_match_params_pass_through():
    """normalize: false makes the case and the spaces count."""
    inputs = [inp("  Paris ", "paris")]
    assert build_judge(Spec("exact_match"))(inputs).accepted == (True,)
    assert build_judge(Spec("exact_match", params={"normalize": False}))(inputs).accepted == (False,)


def test_math_answer_params_pass_through():
    """Without the last-number fallback, a bare "... is 12" has no final answer."""
    inputs = [inp("The answer is 12", "12")]
    judge = build_judge(Spec("math_answer", params={"fallback_last_number": False}))
    assert judge(inputs) == Verdicts((0.0,), (False,), 0)


def test_bad_reward_params_fail_at_build_time():
    with pytest.raises(ValueError, match="unknown param 'normalise'"):
        build_judge(Spec("exact_match", params={"normalise": True}))
    with pytest.raises(ValueError, match="'path' must be an existing directory"):
        build_judge(Spec("reward_model", params={"path": "/no/such/model"}))


def test_threshold_above_one_rejects_even_a_match():
    judge = build_judge(Spec("exact_match", threshold=1.5))
    assert judge([inp("12", "12")]) == Verdicts((1.0,), (False,), 0)


def test_reward_model_judge_thresholds_its_scores(monkeypatch):
    """A fake reward model scoring len(completion) / 10: with threshold 0.3, the scores
    0.2 ("ab"), 0.3 ("abc") and 0.5 ("abcde") give rejected, accepted (>=), accepted."""
    seen = {}

    def fake_factory(params, task_name):
        seen.update(params=params, task_name=task_name)
        return lambda inputs: [len(i.completion) / 10 for i in inputs]

    monkeypatch.setitem(REWARDS, "reward_model", fake_factory)
    judge = build_judge(Spec("reward_model", threshold=0.3, params={"path": "/rm"}), task_name="arith")
    v = judge([inp("ab", None), inp("abc", None), inp("abcde", None)])
    assert v.scores == pytest.approx((0.2, 0.3, 0.5))
    assert v.accepted == (False, True, True)
    assert seen == {"params": {"path": "/rm"}, "task_name": "arith"}
    assert judge.name == "reward_model"


def test_a_judge_missing_its_answer_raises():
    with pytest.raises(ValueError, match="needs an answer"):
        build_judge(Spec("exact_match"))([inp("12", None)])


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        build_judge(Spec("exact_match", threshold="high"))
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        build_judge(Spec("math_answer", threshold=float("nan")))


class FakeGenerate:
    """Returns `replies` and records the prompts it was given, per call."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return self.replies[:len(prompts)]


def test_llm_judge_reads_verdicts_and_counts_parse_failures():
    generate = FakeGenerate(["Verdict: yes", "verdict: NO", "I think so"])
    judge = build_judge(Spec("llm_judge"), generate=generate)
    inputs = [inp("twelve", "12"), inp("13", "12", prompt="What is 6 + 6?"), inp("12.0", "12")]
    v = judge(inputs)
    assert v == Verdicts((1.0, 0.0, 0.0), (True, False, False), 1)
    assert len(generate.calls) == 1 and len(generate.calls[0]) == 3
    second = generate.calls[0][1]
    assert second == DEFAULT_TEMPLATE.format(prompt="What is 6 + 6?", reference="12", candidate="13")
    assert "What is 6 + 6?" in second and "Reference answer:\n12" in second and "Candidate answer:\n13" in second


def test_default_template_asks_for_a_verdict():
    assert DEFAULT_TEMPLATE.rstrip().endswith('"Verdict: yes" or "Verdict: no".')
    assert all(f"{{{name}}}" in DEFAULT_TEMPLATE for name in ("prompt", "reference", "candidate"))


def test_llm_judge_custom_template_and_regex():
    """A custom template is filled as given; the regex's group 1 is the verdict, any case;
    the last match wins; a captured word other than yes/no is a parse failure."""
    generate = FakeGenerate(["[[YES]]", "[[yes]] no wait [[no]]", "[[maybe]]"])
    spec = Spec("llm_judge", template="Q={prompt} R={reference} C={candidate}", verdict_regex=r"\[\[(\w+)\]\]")
    v = build_judge(spec, generate=generate)([inp("a", "b", "p1"), inp("c", "d", "p2"), inp("e", "f", "p3")])
    assert generate.calls == [["Q=p1 R=b C=a", "Q=p2 R=d C=c", "Q=p3 R=f C=e"]]
    assert v == Verdicts((1.0, 0.0, 0.0), (True, False, False), 1)


def test_llm_judge_on_no_inputs_does_not_generate():
    generate = FakeGenerate([])
    assert build_judge(Spec("llm_judge"), generate=generate)([]) == Verdicts((), ())
    assert generate.calls == []


def test_llm_judge_without_generate():
    with pytest.raises(ValueError, match="llm_judge' needs a generate"):
        build_judge(Spec("llm_judge"))


def test_llm_judge_bad_settings():
    generate = FakeGenerate([])
    with pytest.raises(ValueError, match="template must use only the fields"):
        build_judge(Spec("llm_judge", template="Is {answer} right?"), generate=generate)
    with pytest.raises(ValueError, match="not a valid regex"):
        build_judge(Spec("llm_judge", verdict_regex="(yes"), generate=generate)
    with pytest.raises(ValueError, match="needs a group 1"):
        build_judge(Spec("llm_judge", verdict_regex="yes|no"), generate=generate)
    with pytest.raises(ValueError, match="takes no params"):
        build_judge(Spec("llm_judge", params={"temperature": 0.0}), generate=generate)


def test_llm_judge_generate_returning_too_few():
    judge = build_judge(Spec("llm_judge"), generate=lambda prompts: ["Verdict: yes"])
    with pytest.raises(ValueError, match="returned 1 texts for 2 prompts"):
        judge([inp("a", "b"), inp("c", "d")])


def test_unknown_type_names_the_known_ones():
    with pytest.raises(KeyError) as e:
        build_judge(Spec("gpt_vibes"))
    message = str(e.value)
    assert "gpt_vibes" in message
    assert all(name in message for name in ("exact_match", "math_answer", "reward_model", "llm_judge"))
