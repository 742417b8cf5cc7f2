"""The self-play data builders on hand-made items, with a fake judge that scores each
completion from a lookup table and records every call (no model, no Ray)."""

from types import SimpleNamespace as Algo

import pytest

from tunefleet.algorithms.selfplay import BUILDERS, BuildResult, GoldItem, best_and_worst, build_rows
from tunefleet.rewards import RewardInput
from tunefleet.rewards.judges import Verdicts


class TableJudge:
    """Scores a completion by `table` (accepted when >= 0.5); a completion in `unparsed`
    counts as a parse failure. `calls` holds each call's inputs."""

    def __init__(self, table, unparsed=()):
        self.table, self.unparsed, self.calls = dict(table), set(unparsed), []

    def __call__(self, inputs):
        self.calls.append(list(inputs))
        scores = tuple(self.table[i.completion] for i in inputs)
        return Verdicts(scores, tuple(s >= 0.5 for s in scores), sum(i.completion in self.unparsed for i in inputs))


def test_builder_keys():
    assert list(BUILDERS) == ["spin", "s3ft", "ssr", "rft", "iterative_dpo"]
    assert BUILDERS["s3ft"] is BUILDERS["ssr"]


def test_gold_item_coerces_lists_and_needs_a_sample():
    item = GoldItem("p", "g", None, ["s1", "s2"], ["q"])
    assert item.samples == ("s1", "s2") and item.paraphrases == ("q",)
    with pytest.raises(ValueError, match="at least one sample"):
        GoldItem("p", "g", None, ())


def test_unknown_type_lists_the_builders():
    with pytest.raises(KeyError, match="known: \\['iterative_dpo', 'rft', 's3ft', 'spin', 'ssr'\\]"):
        build_rows(Algo(type="star"), [], None)


# ----------------------------------------------------------------------------- spin

def test_spin_pairs_gold_against_the_first_sample_and_skips_identical():
    """p2's sample is its gold up to case and spaces, and p3's first sample too (its second
    sample is ignored): both are skipped, leaving the pairs of p1 and p4."""
    items = [GoldItem("p1", "Paris is the capital.", None, ("Lyon.",)),
             GoldItem("p2", "Twelve", "12", ("  twelve ",)),
             GoldItem("p3", "A B", None, ("a \n b", "x")),
             GoldItem("p4", "4", "4", ("5", "4"))]
    judge = TableJudge({})
    result = build_rows(Algo(type="spin"), items, judge)
    assert result == BuildResult("pairs", (
        {"prompt": "p1", "chosen": "Paris is the capital.", "rejected": "Lyon."},
        {"prompt": "p4", "chosen": "4", "rejected": "5"},
    ), {"prompts": 4, "samples": 4, "pairs": 2, "identical": 2, "rows": 2, "parse_failures": 0})
    assert judge.calls == []


# ----------------------------------------------------------------------------- s3ft / ssr

S3FT_ITEMS = [GoldItem("p1", "g1", "12", ("s1 good",)),
              GoldItem("p2", "g2", None, ("s2 bad",), ("g2 para good",)),
              GoldItem("p3", "g3", "7", ("s3 bad",), ("g3 para bad",)),
              GoldItem("p4", "g4", "9", ("s4 bad",))]
S3FT_TABLE = {"s1 good": 1.0, "s2 bad": 0.0, "s3 bad": 0.0, "s4 bad": 0.2, "g2 para good": 1.0, "g3 para bad": 0.0}


def test_s3ft_uses_the_sample_when_accepted_else_the_gold():
    """ssr (no paraphrase attribute) and s3ft with paraphrase: false: p1's sample is
    accepted; p2-p4 train on their gold. One judge call; p2 is judged against its gold (it
    has no answer), the others against their answers. "s3 bad" is a parse failure."""
    for algo in (Algo(type="ssr"), Algo(type="s3ft", paraphrase=False)):
        judge = TableJudge(S3FT_TABLE, unparsed={"s3 bad"})
        result = build_rows(algo, S3FT_ITEMS, judge)
        assert result.kind == "single"
        assert result.rows == ({"prompt": "p1", "completion": "s1 good"}, {"prompt": "p2", "completion": "g2"},
                               {"prompt": "p3", "completion": "g3"}, {"prompt": "p4", "completion": "g4"})
        assert result.counts == {"prompts": 4, "samples": 4, "accepted": 1, "paraphrased": 0, "gold_used": 3,
                                 "paraphrases_judged": 0, "rows": 4, "parse_failures": 1}
        assert judge.calls == [[RewardInput("p1", "s1 good", "12"), RewardInput("p2", "s2 bad", "g2"),
                                RewardInput("p3", "s3 bad", "7"), RewardInput("p4", "s4 bad", "9")]]


def test_s3ft_paraphrase_path():
    """With paraphrase: true, the rejected items that have a paraphrase (p2, p3; not p4) are
    judged in a second call: p2's is accepted and used, p3's is not (gold). Parse failures
    from both calls add up (1 + 1)."""
    judge = TableJudge(S3FT_TABLE, unparsed={"s3 bad", "g3 para bad"})
    result = build_rows(Algo(type="s3ft", paraphrase=True), S3FT_ITEMS, judge)
    assert [r["completion"] for r in result.rows] == ["s1 good", "g2 para good", "g3", "g4"]
    assert [r["prompt"] for r in result.rows] == ["p1", "p2", "p3", "p4"]
    assert result.counts == {"prompts": 4, "samples": 4, "accepted": 1, "paraphrased": 1, "gold_used": 2,
                             "paraphrases_judged": 2, "rows": 4, "parse_failures": 2}
    assert len(judge.calls) == 2
    assert judge.calls[1] == [RewardInput("p2", "g2 para good", "g2"), RewardInput("p3", "g3 para bad", "7")]


def test_s3ft_paraphrase_no_second_call_when_all_samples_pass():
    items = [GoldItem("p1", "g1", "1", ("ok1",), ("para1",)), GoldItem("p2", "g2", "2", ("ok2",), ("para2",))]
    judge = TableJudge({"ok1": 1.0, "ok2": 0.5})
    result = build_rows(Algo(type="s3ft", paraphrase=True), items, judge)
    assert [r["completion"] for r in result.rows] == ["ok1", "ok2"]
    assert result.counts["accepted"] == 2 and result.counts["paraphrases_judged"] == 0
    assert len(judge.calls) == 1


# ----------------------------------------------------------------------------- rft

RFT_ITEMS = [GoldItem("p1", "g1", "3", ("a", "A ", "b", "c")),
             GoldItem("p2", "Gold two", None, ("gold  TWO", "d", "d")),
             GoldItem("p3", "g3", "5", ("a", "e"))]
RFT_TABLE = {"a": 1.0, "A ": 1.0, "b": 0.0, "c": 1.0, "gold  TWO": 1.0, "d": 0.9, "e": 0.1}


def test_rft_keeps_distinct_accepted_samples_with_gold_rows():
    """p1: a, "A " (= a), c accepted, b not -> keep a, c (1 duplicate). p2: "gold  TWO" is
    the gold (duplicate), d kept, second d duplicate. p3: a kept again (dedup is per
    prompt), e rejected. accepted 3 + 3 + 1 = 7 = kept 4 + duplicates 3."""
    judge = TableJudge(RFT_TABLE, unparsed={"b"})
    result = build_rows(Algo(type="rft", include_gold=True), RFT_ITEMS, judge)
    assert result.kind == "single"
    assert [(r["prompt"], r["completion"]) for r in result.rows] == [
        ("p1", "g1"), ("p1", "a"), ("p1", "c"), ("p2", "Gold two"), ("p2", "d"), ("p3", "g3"), ("p3", "a")]
    assert result.counts == {"prompts": 3, "samples": 9, "accepted": 7, "kept": 4, "duplicates": 3,
                             "gold_rows": 3, "rows": 7, "parse_failures": 1}
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 9
    assert judge.calls[0][4] == RewardInput("p2", "gold  TWO", "Gold two")
    assert judge.calls[0][7] == RewardInput("p3", "a", "5")


def test_rft_without_gold_rows():
    judge = TableJudge(RFT_TABLE)
    result = build_rows(Algo(type="rft", include_gold=False), RFT_ITEMS, judge)
    # Without gold rows the sample equal to p2's gold is a correct answer to keep, not a duplicate.
    assert [(r["prompt"], r["completion"]) for r in result.rows] == [("p1", "a"), ("p1", "c"), ("p2", "gold  TWO"),
                                                                     ("p2", "d"), ("p3", "a")]
    assert result.counts == {"prompts": 3, "samples": 9, "accepted": 7, "kept": 5, "duplicates": 2,
                             "gold_rows": 0, "rows": 5, "parse_failures": 0}


# ----------------------------------------------------------------------------- iterative_dpo

DPO_ITEMS = [GoldItem("p1", "g", None, ("x1", "x2", "x3")),
             GoldItem("p2", "g", None, ("y1", "y2", "y3", "y4")),
             GoldItem("p3", "g", None, ("z",)),
             GoldItem("p4", "g", None, ("Same", "same ")),
             GoldItem("p5", "g", None, ("w1", "w2")),
             GoldItem("p6", "g", None, ("v1", "v2"))]
DPO_TABLE = {"x1": 0.2, "x2": 0.9, "x3": 0.1, "y1": 0.9, "y2": 0.1, "y3": 0.9, "y4": 0.1, "z": 0.7,
             "Same": 1.0, "same ": 0.0, "w1": 0.75, "w2": 0.25, "v1": 0.5, "v2": 0.2}


def test_iterative_dpo_margin_and_ties():
    """min_margin 0.5. p1: best x2 (0.9), worst x3 (0.1), margin 0.8 -> pair. p2: 0.9 and
    0.1 each twice -> the first of each, (y1, y2). p3: one sample -> below. p4: margin 1.0
    but the texts are the same -> below. p5: margin exactly 0.5 -> pair. p6: 0.3 -> below.
    accepted (>= 0.5): x2, y1, y3, z, Same, w1, v1 = 7."""
    judge = TableJudge(DPO_TABLE, unparsed={"z", "v2"})
    result = build_rows(Algo(type="iterative_dpo", min_margin=0.5), DPO_ITEMS, judge)
    assert result == BuildResult("pairs", (
        {"prompt": "p1", "chosen": "x2", "rejected": "x3"},
        {"prompt": "p2", "chosen": "y1", "rejected": "y2"},
        {"prompt": "p5", "chosen": "w1", "rejected": "w2"},
    ), {"prompts": 6, "samples": 14, "accepted": 7, "pairs": 3, "below_margin": 3, "rows": 3, "parse_failures": 2})
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 14
    assert judge.calls[0][0] == RewardInput("p1", "x1", "g")


def test_iterative_dpo_all_tied_makes_no_pair_even_at_zero_margin():
    """All scores equal: best and worst are both the first sample, so there is no pair."""
    items = [GoldItem("p", "g", None, ("r1", "r2", "r3"))]
    result = build_rows(Algo(type="iterative_dpo", min_margin=0.0), items, TableJudge({"r1": 1, "r2": 1, "r3": 1}))
    assert result.rows == () and result.counts["below_margin"] == 1


def test_best_and_worst_take_the_first_of_a_tie():
    assert best_and_worst([0.3, 0.7, 0.7, 0.3]) == (1, 0)
    assert best_and_worst([0.5]) == (0, 0)


# ----------------------------------------------------------------------------- edge cases

ALGOS = [Algo(type="spin"), Algo(type="s3ft", paraphrase=True), Algo(type="ssr"),
         Algo(type="rft", include_gold=True), Algo(type="iterative_dpo", min_margin=0.1)]


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: a.type)
def test_no_items_is_an_empty_result_not_an_error(algo):
    judge = TableJudge({})
    result = build_rows(algo, [], judge)
    assert result.rows == () and judge.calls == []
    assert result.counts["prompts"] == 0 and result.counts["rows"] == 0 and result.counts["parse_failures"] == 0


@pytest.mark.parametrize("algo", ALGOS[1:], ids=lambda a: a.type)
def test_all_rejected_is_not_an_error(algo):
    items = [GoldItem("p1", "g1", "1", ("bad1",)), GoldItem("p2", "g2", "2", ("bad2",))]
    result = build_rows(algo, items, TableJudge({"bad1": 0.0, "bad2": 0.0}))
    assert result.counts["prompts"] == 2 and result.counts["rows"] == len(result.rows)


def test_a_judge_giving_too_few_verdicts_is_an_error():
    """p3 twice: 4 samples, but the judge answers once."""
    def short(inputs):
        return Verdicts((1.0,), (True,))

    with pytest.raises(ValueError, match="1 scores and 1 verdicts for 4 inputs"):
        build_rows(Algo(type="rft", include_gold=False), RFT_ITEMS[2:] + RFT_ITEMS[2:], short)
