"""One eval point of a training run: every suite of the run's EvalPlan on the current weights.

Runs on rank 0 of the training group (train/eval_hook.py hands it an unsharded model) with
the same scoring code `tunefleet eval` uses: generative exact match (greedy, batched HF
generation; eval/generative.py's judge), log-likelihood multiple choice (eval/mc.py),
perplexity (eval/perplexity.py), plus the run's `heldout` suite (eval/heldout.py).

Forgetting: for each `general` suite, the headline metric's change from the base model,
signed so that positive means worse (base - now for accuracies, now - base for perplexities).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

from tunefleet.config.evaluation import HELDOUT, default_mode

HEADLINES = {"generative": "exact_match", "mc": "acc", "ppl": "word_perplexity"}


@dataclass(frozen=True)
class EvalPlan:
    """What a run evaluates (built by the driver, shipped to rank 0 through the object store).

    `suites`: eval/suites.py Suites (the run's `eval.suites` then `eval.general`, names unique);
    `general`: names of the suites forgetting is measured on; `base`: their cached base-model
    metrics (suite -> metrics); `heldout`: eval/heldout.py Heldout or None."""

    suites: tuple = ()
    general: tuple[str, ...] = ()
    heldout: object | None = None
    base: dict = field(default_factory=dict)
    objective: tuple[str, str] | None = None  # (metric, "max" | "min")
    max_new_tokens: int = 32
    batch_size: int = 32
    every_steps: int = 0
    before: bool = True
    fail_final: bool = True

    def names(self) -> list[str]:
        return [s.name for s in self.suites] + ([HELDOUT] if self.heldout is not None else [])

    def headline(self, suite: str) -> str:
        if suite == HELDOUT:
            from tunefleet.eval.heldout import HEADLINE

            return HEADLINE[self.heldout.kind]
        return HEADLINES[next(s.kind for s in self.suites if s.name == suite)]


def forgetting(plan: EvalPlan, base: dict, now: dict) -> dict[str, float]:
    """`forgetting/<suite>` for every general suite scored both at the base and now."""
    out = {}
    for name in plan.general:
        if name in base and name in now:
            metric = plan.headline(name)
            before, after = base[name][metric], now[name][metric]
            out[f"forgetting/{name}"] = before - after if default_mode(metric) == "max" else after - before
    return out


def _generative(lm, tokenizer, suite, plan: EvalPlan):
    from tunefleet.eval.exact_match import greedy_generate
    from tunefleet.eval.generative import score_completions

    completions = greedy_generate(lm, tokenizer, [e.prompt for e in suite.examples], plan.max_new_tokens,
                                  plan.batch_size, f"eval {suite.name}")
    return score_completions(suite, completions)


def run_suite(models, tokenizer, suite, plan: EvalPlan) -> tuple[dict, list[dict]]:
    """(metrics, per-example rows) of one suite. `models`: EvalModels."""
    from tunefleet.eval.mc import run_mc
    from tunefleet.eval.perplexity import run_ppl

    if suite.kind == "generative":
        return _generative(models.lm, tokenizer, suite, plan)
    run = {"mc": run_mc, "ppl": run_ppl}[suite.kind]
    return run(models.lm, tokenizer, suite, min(plan.batch_size, 8))


@dataclass
class EvalModels:
    """The weights of one point as the suites need them: `lm` an HF causal LM (or PeftModel),
    `scorer` the TokenLogpModel/ValueModel of training, `reward` the run's reward (RL)."""

    lm: object
    scorer: object
    reward: object | None = None


def run_heldout(models: EvalModels, tokenizer, plan: EvalPlan, base_stats):
    """(metrics, rows, stats) of the heldout suite; `stats` are kept as the next points' base."""
    from tunefleet.eval.heldout import SCORERS, score_rl

    ho = plan.heldout
    if ho.kind == "rl":
        metrics, rows = score_rl(models.lm, tokenizer, ho, models.reward, plan.max_new_tokens, plan.batch_size)
        return metrics, rows, None
    return SCORERS[ho.kind](models.scorer, ho, tokenizer.pad_token_id, min(plan.batch_size, 8), base_stats)


@dataclass
class PointResult:
    step: int
    metrics: dict = field(default_factory=dict)  # suite -> {metric: value}
    rows: dict = field(default_factory=dict)  # suite -> per-example rows
    errors: dict = field(default_factory=dict)  # suite -> traceback text

    def flat(self) -> dict[str, float]:
        return {f"eval/{s}/{k}": float(v) for s, m in self.metrics.items() for k, v in m.items()}


def run_point(models: EvalModels, tokenizer, plan: EvalPlan, step: int, names: list[str],
              state: dict) -> PointResult:
    """Score the suites `names` at `step`. A suite that raises is recorded in `errors` (its
    traceback) and the others still run: the caller decides whether that fails the run.
    `state`: rank 0's memory across points (`heldout_base`: the step-0 heldout stats)."""
    result = PointResult(step)
    by_name = {s.name: s for s in plan.suites}
    for name in names:
        try:
            if name == HELDOUT:
                metrics, rows, stats = run_heldout(models, tokenizer, plan, state.get("heldout_base"))
                if step == 0 and stats is not None:
                    state["heldout_base"] = stats
            else:
                metrics, rows = run_suite(models, tokenizer, by_name[name], plan)
        except Exception:  # noqa: BLE001 - one broken suite must not hide the others
            result.errors[name] = traceback.format_exc()
            print(f"[eval] step {step}: suite {name} failed:\n{result.errors[name]}", flush=True)
            continue
        result.metrics[name], result.rows[name] = metrics, rows
    return result
