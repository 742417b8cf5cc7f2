"""Judges: does a sample count as a good answer? The verdicts self-play builds data from.

A judge is batched, `judge(inputs: list[RewardInput]) -> Verdicts`: per input a score and
whether it is accepted (`score >= spec.threshold`). `JUDGES` maps `spec.type` to a factory
`factory(spec, task_name, generate) -> fn(inputs) -> Verdicts`:

- exact_match, math_answer, reward_model (and every other built-in RL reward): the RL
  reward of that name (`REWARDS[type]`, built from `spec.params`), so a judge and a reward
  never disagree on the same text.
- llm_judge: a model asked, through `generate(prompts) -> texts` (the driver runs it on
  the vLLM pool), whether the candidate is equivalent to the reference; its reply is read
  with `spec.verdict_regex`. A reply the regex cannot read is a parse failure: score 0.0,
  rejected, and counted in `Verdicts.parse_failures` so the driver can report it.

When self-play compares a sample with the gold, the driver passes
`RewardInput(prompt=..., completion=sample, answer=gold_or_answer)`.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunefleet.config.selfplay import DEFAULT_TEMPLATE, DEFAULT_VERDICT_REGEX
from tunefleet.rewards.base import RewardInput, is_number, need_answers
from tunefleet.rewards.registry import REWARDS

DEFAULT_THRESHOLD = 0.5

TEMPLATE_FIELDS = ("prompt", "reference", "candidate")

Generate = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Verdicts:
    """Per input: score (float) and accepted (bool); parse_failures counts llm_judge outputs
    the regex could not parse (treated as rejections, score 0.0)."""

    scores: tuple[float, ...]
    accepted: tuple[bool, ...]
    parse_failures: int = 0

    def __post_init__(self):
        if len(self.scores) != len(self.accepted):
            raise ValueError(f"Verdicts: {len(self.scores)} scores but {len(self.accepted)} accepted flags")


JudgeFn = Callable[[list[RewardInput]], Verdicts]
JudgeFactory = Callable[[Any, "str | None", "Generate | None"], JudgeFn]


@dataclass(frozen=True)
class Judge:
    """A named batched judge; calling it checks that it gave one verdict per input."""

    name: str
    fn: JudgeFn

    def __call__(self, inputs: Sequence[RewardInput]) -> Verdicts:
        inputs = list(inputs)
        if not inputs:
            return Verdicts((), ())
        verdicts = self.fn(inputs)
        if len(verdicts.scores) != len(inputs):
            raise ValueError(f"judge {self.name!r} gave {len(verdicts.scores)} verdicts for {len(inputs)} inputs")
        return verdicts


def _threshold(spec: Any) -> float:
    """`spec.threshold` (default 0.5) as a float; ValueError unless a finite number."""
    value = getattr(spec, "threshold", DEFAULT_THRESHOLD)
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"judge {spec.type!r}: threshold must be a finite number, got {value!r}")
    return float(value)


def _params(spec: Any) -> dict:
    params = getattr(spec, "params", None)
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ValueError(f"judge {spec.type!r}: params must be a mapping, got {params!r}")
    return dict(params)


def thresholded(scores: Sequence[float], threshold: float, parse_failures: int = 0) -> Verdicts:
    """Verdicts with accepted = score >= threshold."""
    scores = tuple(float(s) for s in scores)
    return Verdicts(scores, tuple(s >= threshold for s in scores), parse_failures)


def reward_judge(spec: Any, task_name: str | None, generate: Generate | None = None) -> JudgeFn:
    """A judge from the RL reward `REWARDS[spec.type]`, built from `spec.params` (which the
    reward checks now): accepted when its score reaches `spec.threshold`."""
    threshold = _threshold(spec)
    reward = REWARDS[spec.type](_params(spec), task_name)
    return lambda inputs: thresholded(reward(inputs), threshold)


def check_template(template: Any) -> str:
    """`template` if it is a string that `str.format` fills from exactly the fields
    {prompt}, {reference}, {candidate} (any of them may be left out); else ValueError."""
    if not isinstance(template, str):
        raise ValueError(f"judge 'llm_judge': template must be a string, got {template!r}")
    try:
        template.format(**dict.fromkeys(TEMPLATE_FIELDS, ""))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"judge 'llm_judge': template must use only the fields "
                         f"{{{'}, {'.join(TEMPLATE_FIELDS)}}} (str.format; double any literal braces): {e!r}") from None
    return template


def compile_verdict_regex(pattern: Any) -> re.Pattern:
    """The compiled `pattern`; ValueError unless it is a valid regex with a group 1."""
    if not isinstance(pattern, str):
        raise ValueError(f"judge 'llm_judge': verdict_regex must be a string, got {pattern!r}")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"judge 'llm_judge': verdict_regex is not a valid regex ({e}): {pattern!r}") from None
    if regex.groups < 1:
        raise ValueError(f"judge 'llm_judge': verdict_regex needs a group 1 that captures yes/no: {pattern!r}")
    return regex


def read_verdict(regex: re.Pattern, reply: str) -> float | None:
    """1.0 for "yes", 0.0 for "no" (group 1 of the last match, any case), None if unreadable.

    The last match wins, so a judge that reasons first and then concludes is read by its
    conclusion."""
    matches = list(regex.finditer(reply))
    if not matches:
        return None
    word = (matches[-1].group(1) or "").strip().casefold()
    return {"yes": 1.0, "no": 0.0}.get(word)


def llm_judge(spec: Any, task_name: str | None, generate: Generate | None = None) -> JudgeFn:
    """A model's yes/no verdict on whether `completion` is equivalent to `answer`."""
    if generate is None:
        raise ValueError("judge 'llm_judge' needs a generate(prompts) -> texts function to run the judge model; "
                         "build_judge(spec, task_name, generate=...) was called without one")
    if _params(spec):
        raise ValueError(f"judge 'llm_judge': takes no params, got {sorted(_params(spec))} "
                         f"(set template, verdict_regex and threshold instead)")
    threshold = _threshold(spec)
    template = check_template(getattr(spec, "template", None) or DEFAULT_TEMPLATE)
    regex = compile_verdict_regex(getattr(spec, "verdict_regex", None) or DEFAULT_VERDICT_REGEX)
    uses_reference = "reference" in {name for _, name, _, _ in string.Formatter().parse(template) if name}

    def fn(inputs: list[RewardInput]) -> Verdicts:
        if uses_reference:
            need_answers("llm_judge", inputs)
        prompts = [template.format(prompt=inp.prompt, reference=inp.answer or "", candidate=inp.completion)
                   for inp in inputs]
        replies = list(generate(prompts))
        if len(replies) != len(prompts):
            raise ValueError(f"judge 'llm_judge': generate returned {len(replies)} texts for {len(prompts)} prompts")
        read = [read_verdict(regex, str(reply)) for reply in replies]
        failures = sum(score is None for score in read)
        return thresholded([0.0 if score is None else score for score in read], threshold, failures)

    return fn


# Every built-in RL reward judges with its own score; llm_judge asks a model.
JUDGES: dict[str, JudgeFactory] = {**{name: reward_judge for name in REWARDS}, "llm_judge": llm_judge}


def build_judge(spec: Any, task_name: str | None = None, generate: Generate | None = None) -> Judge:
    """The judge `spec` describes (`spec.type` is a `JUDGES` key); every setting is checked
    here, before any generation. `generate` is required for llm_judge only.

    KeyError lists the known types for an unknown one."""
    try:
        factory = JUDGES[spec.type]
    except KeyError:
        raise KeyError(f"no judge registered for type={spec.type!r}; known: {sorted(JUDGES)}") from None
    return Judge(spec.type, factory(spec, task_name, generate))
