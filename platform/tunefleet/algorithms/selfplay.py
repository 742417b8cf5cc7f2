"""Self-play data builders: model_t's generations -> the next iteration's training set.

Each builder is a pure function `builder(algo, items, judge) -> BuildResult`, registered in
`BUILDERS` by `algorithm.type`. `judge(inputs: list[RewardInput]) -> Verdicts` is a
`tunefleet.rewards.judges.Judge` (or any callable like it); each builder judges all its
samples in one batched call (s3ft/ssr make a second one for paraphrases), so an llm_judge
is one trip through the vLLM pool. This module imports neither torch nor ray (though the
`tunefleet.algorithms` package's __init__ imports torch for the losses).

- spin: pairs (chosen = gold, rejected = model_t's sample); no judge.
- s3ft, ssr: SFT on the sample if the judge accepts it, else on a judged paraphrase of the
  gold (s3ft's option), else on the gold.
- rft: SFT on the accepted samples, deduplicated per prompt (plus the gold, optionally).
- iterative_dpo: pairs (chosen = best-scoring sample, rejected = worst) with a margin.

Texts are compared after strip + whitespace collapse + casefold (`normalise_text`). A
builder never raises on an empty result: `counts` says why, and the driver decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunefleet.rewards.base import RewardInput
from tunefleet.rewards.mathnorm import normalise_text

Judge = Callable[[list[RewardInput]], Any]  # -> tunefleet.rewards.judges.Verdicts


@dataclass(frozen=True)
class GoldItem:
    """One prompt with its gold response and model_t's samples.

    - prompt: the user prompt text.
    - gold: the gold response text (what SFT would train on).
    - answer: the verifiable answer, if any (arith: the number; GSM8K: the gold answer text
      with '#### N' does for math_answer). Judges compare with it, else with `gold`.
    - samples: model_t's samples (k >= 1).
    - paraphrases: model_t's paraphrases of the gold (s3ft's option; may be empty).
    """

    prompt: str
    gold: str
    answer: str | None
    samples: tuple[str, ...]
    paraphrases: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "samples", tuple(self.samples))
        object.__setattr__(self, "paraphrases", tuple(self.paraphrases))
        if not self.samples:
            raise ValueError(f"GoldItem needs at least one sample (prompt starts {self.prompt[:60]!r})")

    @property
    def reference(self) -> str:
        """What a judge compares a sample with: the answer if there is one, else the gold."""
        return self.answer if self.answer is not None else self.gold


@dataclass(frozen=True)
class BuildResult:
    """The next training set and how it was made.

    - kind: "single" (SFT rows {"prompt", "completion"}) or "pairs" ({"prompt", "chosen", "rejected"}).
    - rows: in item order.
    - counts: every count the method knows; always "prompts", "rows", "parse_failures".
    """

    kind: str
    rows: tuple[dict, ...]
    counts: dict[str, int]


Builder = Callable[[Any, list[GoldItem], Judge], BuildResult]


def same_text(a: str, b: str) -> bool:
    """True when `a` and `b` are equal after strip + whitespace collapse + casefold."""
    return normalise_text(a) == normalise_text(b)


def judge_batch(judge: Judge, inputs: list[RewardInput]) -> tuple[list[float], list[bool], int]:
    """(scores, accepted, parse_failures) from one call of `judge`; no call for no inputs."""
    if not inputs:
        return [], [], 0
    verdicts = judge(inputs)
    scores, accepted = list(verdicts.scores), list(verdicts.accepted)
    if len(scores) != len(inputs) or len(accepted) != len(inputs):
        raise ValueError(f"judge gave {len(scores)} scores and {len(accepted)} verdicts for {len(inputs)} inputs")
    return scores, accepted, int(verdicts.parse_failures)


def _result(kind: str, rows: list[dict], counts: dict[str, int]) -> BuildResult:
    return BuildResult(kind, tuple(rows), {**counts, "rows": len(rows)})


def _single(prompt: str, completion: str) -> dict:
    return {"prompt": prompt, "completion": completion}


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def build_spin(algo: Any, items: Sequence[GoldItem], judge: Judge | None = None) -> BuildResult:
    """Pairs chosen = gold, rejected = samples[0]; an item whose sample is the gold (after
    normalisation) is skipped and counted as `identical`: it has no signal. No judge call."""
    rows, identical = [], 0
    for item in items:
        if same_text(item.samples[0], item.gold):
            identical += 1
        else:
            rows.append(_pair(item.prompt, item.gold, item.samples[0]))
    counts = {"prompts": len(items), "samples": len(items), "pairs": len(rows), "identical": identical,
              "parse_failures": 0}
    return _result("pairs", rows, counts)


def build_sample_or_gold(algo: Any, items: Sequence[GoldItem], judge: Judge) -> BuildResult:
    """S3FT / SSR: per item, SFT on samples[0] if the judge accepts it (vs the answer, else
    the gold); else, with `algo.paraphrase` and a paraphrase, on the first paraphrase if the
    judge accepts it; else on the gold. One judge call for the samples, one for the
    paraphrases of the rejected items (if any)."""
    items = list(items)
    _, accepted, failures = judge_batch(
        judge, [RewardInput(item.prompt, item.samples[0], item.reference) for item in items])
    use_paraphrase = bool(getattr(algo, "paraphrase", False))
    retry = [i for i, item in enumerate(items) if not accepted[i] and use_paraphrase and item.paraphrases]
    _, para_ok, para_failures = judge_batch(
        judge, [RewardInput(items[i].prompt, items[i].paraphrases[0], items[i].reference) for i in retry])
    paraphrase_accepted = {i for i, ok in zip(retry, para_ok) if ok}
    rows, counts = [], {"accepted": 0, "paraphrased": 0, "gold_used": 0}
    for i, item in enumerate(items):
        if accepted[i]:
            completion, key = item.samples[0], "accepted"
        elif i in paraphrase_accepted:
            completion, key = item.paraphrases[0], "paraphrased"
        else:
            completion, key = item.gold, "gold_used"
        counts[key] += 1
        rows.append(_single(item.prompt, completion))
    counts = {"prompts": len(items), "samples": len(items), **counts, "paraphrases_judged": len(retry),
              "parse_failures": failures + para_failures}
    return _result("single", rows, counts)


def build_rft(algo: Any, items: Sequence[GoldItem], judge: Judge) -> BuildResult:
    """RFT / STaR: SFT on each prompt's accepted samples, in sample order. A sample that
    repeats an earlier kept one of its prompt (or, with `algo.include_gold`, the gold, whose
    row then comes first) is dropped (`duplicates`). One judge call for all samples."""
    items = list(items)
    inputs = [RewardInput(item.prompt, s, item.reference) for item in items for s in item.samples]
    _, accepted, failures = judge_batch(judge, inputs)
    include_gold = bool(algo.include_gold)
    rows, kept, duplicates, at = [], 0, 0, 0
    for item in items:
        if include_gold:
            rows.append(_single(item.prompt, item.gold))
        # With the gold row in the set a sample equal to it adds nothing; without, it is a
        # verified correct answer like any other.
        seen = {normalise_text(item.gold)} if include_gold else set()
        for sample in item.samples:
            ok, at = accepted[at], at + 1
            if not ok:
                continue
            key = normalise_text(sample)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            kept += 1
            rows.append(_single(item.prompt, sample))
    counts = {"prompts": len(items), "samples": len(inputs), "accepted": sum(accepted), "kept": kept,
              "duplicates": duplicates, "gold_rows": len(items) if include_gold else 0, "parse_failures": failures}
    return _result("single", rows, counts)


def best_and_worst(scores: Sequence[float]) -> tuple[int, int]:
    """Indices of the highest and the lowest score; on a tie, the first of them."""
    best = max(range(len(scores)), key=lambda i: scores[i])
    worst = min(range(len(scores)), key=lambda i: scores[i])
    return best, worst


def build_iterative_dpo(algo: Any, items: Sequence[GoldItem], judge: Judge) -> BuildResult:
    """Per prompt a pair chosen = best-scoring sample, rejected = worst (ties: the first),
    kept only if score(best) - score(worst) >= `algo.min_margin` and the two texts differ;
    otherwise, and for a prompt with a single sample, counted as `below_margin`. One judge
    call for all samples."""
    items = list(items)
    inputs = [RewardInput(item.prompt, s, item.reference) for item in items for s in item.samples]
    scores, accepted, failures = judge_batch(judge, inputs)
    min_margin = float(algo.min_margin)
    rows, below, at = [], 0, 0
    for item in items:
        mine, at = scores[at:at + len(item.samples)], at + len(item.samples)
        best, worst = best_and_worst(mine)
        chosen, rejected = item.samples[best], item.samples[worst]
        if len(mine) < 2 or mine[best] - mine[worst] < min_margin or same_text(chosen, rejected):
            below += 1
        else:
            rows.append(_pair(item.prompt, chosen, rejected))
    counts = {"prompts": len(items), "samples": len(inputs), "accepted": sum(accepted), "pairs": len(rows),
              "below_margin": below, "parse_failures": failures}
    return _result("pairs", rows, counts)


BUILDERS: dict[str, Builder] = {
    "spin": build_spin,
    "s3ft": build_sample_or_gold,
    "ssr": build_sample_or_gold,  # S3FT's rule; SSR differs only in the judge its config requires
    "rft": build_rft,
    "iterative_dpo": build_iterative_dpo,
}


def get_builder(algorithm_type: str) -> Builder:
    """The builder for `algorithm.type`; KeyError lists what is registered."""
    try:
        return BUILDERS[algorithm_type]
    except KeyError:
        raise KeyError(f"no self-play builder for algorithm.type={algorithm_type!r}; "
                       f"known: {sorted(BUILDERS)}") from None


def build_rows(algo: Any, items: Sequence[GoldItem], judge: Judge | None) -> BuildResult:
    """The next training set from model_t's generations: dispatch on `BUILDERS[algo.type]`."""
    return get_builder(algo.type)(algo, list(items), judge)
