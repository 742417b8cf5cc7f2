"""Suite `heldout`: `data.eval_path` scored with the method's own measure, at every eval point.

  single (SFT):    loss = mean response-token NLL over all held-out tokens, perplexity = exp(loss)
  pairs (DPO...):  preference_accuracy (chosen has the higher mean log-prob, or the higher value
                   for reward models) and, against the run's step-0 stats, implicit_reward_accuracy
  kto:             loss over desirable rows, label_accuracy = the share of rows whose mean
                   log-prob moved the way their label asks (up if desirable, down if not),
                   against the step-0 stats
  rl:              reward_mean of greedy completions under the run's rewards, and each term
Rows are tokenized (or, for RL, prompt rows) by the driver exactly as training rows are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunefleet.eval.preference import pair_stats, preference_metrics, sequence_stats

HEADLINE = {"single": "loss", "pairs": "preference_accuracy", "kto": "loss", "rl": "reward_mean"}


@dataclass(frozen=True)
class Heldout:
    """`kind`: the method's batch kind; `rows`: tokenized rows (prompt rows for rl)."""

    kind: str
    rows: tuple
    path: str
    digest: str


def _nll(stats) -> dict:
    total, count = sum(s for s, _ in stats), sum(n for _, n in stats)
    loss = -total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(count)}


def _rows(stats, extra=None) -> list[dict]:
    return [{"id": str(i), "input": "", "reference": "", "output": f"{s:.6f}", "score": s / max(n, 1),
             **(extra[i] if extra else {})} for i, (s, n) in enumerate(stats)]


def score_single(scorer, ho: Heldout, pad_id: int, batch: int, base=None):
    stats = sequence_stats(scorer, list(ho.rows), pad_id, batch, "heldout")
    return _nll(stats), _rows(stats), stats


def score_pairs(scorer, ho: Heldout, pad_id: int, batch: int, base=None):
    chosen, rejected = pair_stats(scorer, list(ho.rows), pad_id, batch, "heldout")
    metrics = {**preference_metrics(chosen, rejected, base), "n": float(len(chosen))}
    rows = [{"id": str(i), "input": "", "reference": "chosen", "output": f"{c[0] / c[1]:.6f} vs {r[0] / r[1]:.6f}",
             "score": float(c[0] / c[1] > r[0] / r[1])} for i, (c, r) in enumerate(zip(chosen, rejected))]
    return metrics, rows, (chosen, rejected)


def score_kto(scorer, ho: Heldout, pad_id: int, batch: int, base=None):
    stats = sequence_stats(scorer, list(ho.rows), pad_id, batch, "heldout")
    labels = [r["kto_label"] > 0.5 for r in ho.rows]
    metrics = _nll([s for s, good in zip(stats, labels) if good] or stats)
    if base is not None:
        moved = [(s / max(n, 1) - b / max(bn, 1) > 0) == good for (s, n), (b, bn), good in zip(stats, base, labels)]
        metrics["label_accuracy"] = sum(moved) / max(len(moved), 1)
    return metrics, _rows(stats, [{"label": good} for good in labels]), stats


def score_rl(lm, tokenizer, ho: Heldout, reward, max_new_tokens: int, batch: int):
    """Greedy completions of the held-out prompts, scored by the run's CombinedReward."""
    from tunefleet.eval.exact_match import greedy_generate
    from tunefleet.rewards import RewardInput

    prompts = [r["prompt"] for r in ho.rows]
    completions = greedy_generate(lm, tokenizer, prompts, max_new_tokens, batch, "heldout")
    inputs = [RewardInput(r["prompt"], c, r["answer"], r["meta"], len(tokenizer.encode(c, add_special_tokens=False)))
              for r, c in zip(ho.rows, completions)]
    totals, parts = reward(inputs)
    n = max(len(totals), 1)
    metrics = {"reward_mean": math.fsum(totals) / n, **{f"reward_{k}": math.fsum(v) / n for k, v in parts.items()},
               "n": float(len(totals))}
    rows = [{"id": str(i), "input": r["prompt"], "reference": r["answer"] or "", "output": c, "score": float(t)}
            for i, (r, c, t) in enumerate(zip(ho.rows, completions, totals))]
    return metrics, rows


SCORERS = {"single": score_single, "pairs": score_pairs, "kto": score_kto}
