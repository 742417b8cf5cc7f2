"""The `eval:` section: what a training run evaluates, when, and which metric is its objective.

Suites use the `tunefleet eval` syntax (eval/suites.py): `arith:1-3`, `reverse`, `gsm8k:PATH`,
`mc:PATH`, `ppl:PATH`. Only the kind of each spec is checked here (no files are read: this
package imports without torch or Ray and answers in well under a second); the driver reads
every file, and checks the objective against the suites' real names, before a worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunefleet.config.loader import ConfigError, check
from tunefleet.config.loader import dotted as _p

SUITE_KINDS = ("arith", "reverse", "gsm8k", "mc", "ppl")
FILE_KINDS = ("gsm8k", "mc", "ppl")
HELDOUT = "heldout"  # the suite name of `data.eval_path` scored with the method's own measure
# Metrics where lower is better; every other metric is maximised unless `mode` says otherwise.
LOWER_IS_BETTER = ("loss", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity")


def default_mode(metric: str) -> str:
    """'min' for losses and perplexities (by the metric's last path part), else 'max'."""
    return "min" if metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"


@dataclass(frozen=True)
class ObjectiveConfig:
    """The metric a run is judged by: `eval/<suite>/<metric>` at the final eval point.
    `mode: null` infers it (min for losses and perplexities, max otherwise)."""

    metric: str
    mode: Literal["max", "min"] | None = None

    @property
    def direction(self) -> str:
        return self.mode or default_mode(self.metric)

    def validate(self, path: str) -> None:
        parts = self.metric.split("/")
        check(len(parts) == 3 and parts[0] == "eval" and all(parts), _p(path, "metric"), self.metric,
              "eval/<suite>/<metric>, e.g. eval/arith_l1/exact_match")


def spec_kind(spec: str) -> str:
    """The kind a suite spec names (`arith:1-3` -> arith, `ppl:x.jsonl` -> ppl)."""
    return spec.partition(":")[0]


def _check_specs(specs: tuple[str, ...], path: str) -> None:
    for i, spec in enumerate(specs):
        kind, _, rest = spec.partition(":")
        where = f"{path}[{i}]"
        check(kind in SUITE_KINDS, where, spec, f"a suite spec: {', '.join(SUITE_KINDS)} (e.g. arith:1-3, ppl:FILE)")
        if kind in FILE_KINDS and not rest:
            raise ConfigError(where, f"bad value {spec!r}; allowed: {kind}:PATH (a JSONL/Parquet file)")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of a training run.

    `before`/`after`: the task's held-out accuracy (built-in tasks) and held-out preference
    accuracy (pair methods with `data.eval_path`), on the driver, before and after training.
    `suites`: evaluated in the training loop at step 0 (when `before`), every `every_steps`
    (0: never in between), each time the run's cumulative training target tokens cross a
    multiple of `every_tokens` (0: off; budget points comparable across methods, used by
    campaigns) and after the last step, logged as `eval/<suite>/<metric>`;
    `data.eval_path` adds the suite `heldout` (the method's loss, preference accuracy or
    reward on held-out rows). `general`: suites that should not get worse; their base-model
    scores are cached by model and data digest and each eval point logs `forgetting/<suite>`.
    `limit`: examples per suite (null: 100 task problems per level, every row of a file).
    `objective`: the run's metric (default: the first suite's headline metric).
    `fail_final`: an error in the final eval point fails the run (an earlier one only logs).
    """

    before: bool = True
    after: bool = True
    max_new_tokens: int = 32
    batch_size: int = 32
    every_steps: int = 0
    every_tokens: int = 0
    suites: tuple[str, ...] = ()
    general: tuple[str, ...] = ()
    limit: int | None = None
    objective: ObjectiveConfig | None = None
    fail_final: bool = True

    def validate(self, path: str) -> None:
        check(self.max_new_tokens >= 1, _p(path, "max_new_tokens"), self.max_new_tokens, ">= 1")
        check(self.batch_size >= 1, _p(path, "batch_size"), self.batch_size, ">= 1")
        check(self.every_steps >= 0, _p(path, "every_steps"), self.every_steps, ">= 0 (0 = only at the ends)")
        check(self.every_tokens >= 0, _p(path, "every_tokens"), self.every_tokens, ">= 0 (0 = off)")
        check(self.limit is None or self.limit >= 1, _p(path, "limit"), self.limit, ">= 1 or null")
        _check_specs(self.suites, _p(path, "suites"))
        _check_specs(self.general, _p(path, "general"))
