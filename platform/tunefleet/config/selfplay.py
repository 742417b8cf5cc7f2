"""The `selfplay:` section: the iteration driver's settings and its judge. Imports neither
torch nor ray. The methods themselves (`algorithm.type: spin` ...) are in selfplay_methods.py."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunefleet.config.loader import ConfigError, check
from tunefleet.config.loader import dotted as _p
from tunefleet.config.rewards import BUILTIN_REWARDS, check_reward_params

JUDGE_TYPES = (*BUILTIN_REWARDS, "llm_judge")  # every built-in RL reward is a judge too
DEFAULT_TEMPLATE = (
    "You are grading an answer to a question.\n\n"
    "Question:\n{prompt}\n\n"
    "Reference answer:\n{reference}\n\n"
    "Candidate answer:\n{candidate}\n\n"
    "Is the candidate answer equivalent to the reference answer: does it reach the same final "
    "answer, even if it is worded differently? Reply with exactly one line, "
    '"Verdict: yes" or "Verdict: no".'
)
DEFAULT_VERDICT_REGEX = r"(?i)verdict\s*:\s*(yes|no)"


@dataclass(frozen=True)
class JudgeSpec:
    """Accepts a sample when its score >= `threshold`. A built-in RL reward's name
    (math_answer, exact_match, reward_model, format, ...) judges with that reward (`params`
    as in `rewards:`);
    llm_judge runs `template` ({prompt}, {reference}, {candidate}) through the pool and
    parses `verdict_regex` (group 1 yes/no); unparsable verdicts count as rejections."""

    type: str = "math_answer"
    threshold: float = 0.5
    params: dict = field(default_factory=dict)
    template: str = DEFAULT_TEMPLATE
    verdict_regex: str = DEFAULT_VERDICT_REGEX
    max_tokens: int = 32

    def validate(self, path: str) -> None:
        check(self.type in JUDGE_TYPES, _p(path, "type"), self.type, ", ".join(JUDGE_TYPES))
        check(isinstance(self.params, dict), _p(path, "params"), self.params, "a mapping")
        if self.type != "llm_judge":
            check_reward_params(self.type, self.params, _p(path, "params"))
        elif self.params:
            raise ConfigError(_p(path, "params"), "llm_judge takes no params; set template and verdict_regex")
        for name in ("prompt", "reference", "candidate"):
            check("{" + name + "}" in self.template, _p(path, "template"), self.template[:60],
                  "a template with {prompt}, {reference} and {candidate}")
        try:
            groups = re.compile(self.verdict_regex).groups
        except re.error as e:
            raise ConfigError(_p(path, "verdict_regex"),
                              f"bad value {self.verdict_regex!r}: not a regex ({e})") from None
        check(groups >= 1, _p(path, "verdict_regex"), self.verdict_regex, "a regex whose group 1 is yes or no")
        check(self.max_tokens >= 1, _p(path, "max_tokens"), self.max_tokens, ">= 1")


@dataclass(frozen=True)
class SelfPlayConfig:
    """The iteration driver (pipelines/selfplay_job.py). Each iteration samples
    `samples_per_prompt` completions for `num_prompts` gold prompts (0: all) from model_t.
    `stop_on_regression`: stop when the objective got worse than model_t's. `register`:
    the registered model's name (default: the run's name)."""

    iterations: int = 2
    num_prompts: int = 64
    samples_per_prompt: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 64
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    stop_on_regression: bool = True
    register: str | None = None
    seed: int = 0

    def validate(self, path: str) -> None:
        check(self.iterations >= 1, _p(path, "iterations"), self.iterations, ">= 1")
        check(self.num_prompts >= 0, _p(path, "num_prompts"), self.num_prompts, ">= 0 (0 = every gold row)")
        check(self.samples_per_prompt >= 1, _p(path, "samples_per_prompt"), self.samples_per_prompt, ">= 1")
        check(self.temperature >= 0, _p(path, "temperature"), self.temperature, ">= 0")
        check(0 < self.top_p <= 1, _p(path, "top_p"), self.top_p, "0 < top_p <= 1")
        check(self.max_new_tokens >= 1, _p(path, "max_new_tokens"), self.max_new_tokens, ">= 1")
