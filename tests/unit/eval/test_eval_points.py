"""In-training eval points: forgetting's sign, one broken suite not hiding the others, the
final point failing the run, the objective, config and plan checks, and the held-out loss."""

import json
import math

import pytest

from tunefleet.config import ConfigError, load_config
from tunefleet.eval.points import EvalPlan, forgetting, run_point
from tunefleet.eval.suites import parse_suites
from tunefleet.pipelines.eval_steps import EvalFailed, build_plan, finish_eval


def _plan(**kw):
    suites = tuple(parse_suites(["arith:1"], limit=2)) + tuple(kw.pop("extra", ()))
    return EvalPlan(suites=suites, **kw)


def test_forgetting_is_positive_when_a_general_suite_gets_worse(tmp_path):
    """exact_match 0.50 -> 0.25: forgetting +0.25 (max metric: base - now).
    word_perplexity 10 -> 12: +2 (min metric: now - base). Improvements are negative."""
    ppl = tmp_path / "g.jsonl"
    ppl.write_text(json.dumps({"text": "a b"}) + "\n")
    plan = _plan(extra=parse_suites([f"ppl:{ppl}"]), general=("arith_l1", "ppl_g"))
    base = {"arith_l1": {"exact_match": 0.5}, "ppl_g": {"word_perplexity": 10.0}}
    assert forgetting(plan, base, {"arith_l1": {"exact_match": 0.25}, "ppl_g": {"word_perplexity": 12.0}}) == {
        "forgetting/arith_l1": 0.25, "forgetting/ppl_g": 2.0}
    assert forgetting(plan, base, {"arith_l1": {"exact_match": 0.75}}) == {"forgetting/arith_l1": -0.25}


def test_a_suite_that_raises_is_recorded_and_the_others_still_run(monkeypatch):
    import tunefleet.eval.points as points

    extra = parse_suites(["reverse:1"], limit=2)
    plan = _plan(extra=extra)

    def fake(models, tok, suite, plan):
        if suite.name == "arith_l1":
            raise RuntimeError("boom in arith")
        return {"exact_match": 1.0, "n": 2}, [{"id": "x", "score": 1.0}]

    monkeypatch.setattr(points, "run_suite", fake)
    res = run_point(None, None, plan, 3, ["arith_l1", "reverse_l1"], {})
    assert list(res.errors) == ["arith_l1"] and "boom in arith" in res.errors["arith_l1"]
    assert res.metrics == {"reverse_l1": {"exact_match": 1.0, "n": 2}}
    assert res.flat() == {"eval/reverse_l1/exact_match": 1.0, "eval/reverse_l1/n": 2.0}


class _Tracker:
    run_id = "r1"

    def __init__(self):
        self.metrics, self.artifacts, self.texts = {}, [], {}

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(artifact_path)

    def log_metrics(self, metrics, step):
        self.metrics.update({(k, step): v for k, v in metrics.items()})

    def log_text(self, text, name):
        self.texts[name] = text


def _point(eval_dir, step, final, value, errors=None):
    d = eval_dir / f"step_{step:06d}"
    d.mkdir(parents=True)
    rec = {"step": step, "final": final, "metrics": {"arith_l1": {"exact_match": value}},
           "flat": {"eval/arith_l1/exact_match": value}, "errors": errors or {}, "base": None}
    (d / "metrics.json").write_text(json.dumps(rec))


def test_finish_eval_logs_every_point_and_the_objective_and_fails_on_a_final_error(tmp_path):
    plan = _plan(objective=("eval/arith_l1/exact_match", "max"))
    _point(tmp_path, 0, False, 0.1, errors={"arith_l1": "an early failure only logs"})
    _point(tmp_path, 4, True, 0.6)
    tracker = _Tracker()
    out = finish_eval(tracker, None, plan, tmp_path, "m")
    # eval.objective_start: step 0's score of the objective (the starting model's)
    assert out == {"eval/arith_l1/exact_match": 0.6, "eval.objective": 0.6, "eval.objective_start": 0.1}
    assert tracker.metrics[("eval.objective", 4)] == 0.6
    assert {"eval/step_000000", "eval/step_000004", "plots"} <= set(tracker.artifacts)

    failing = tmp_path / "f"
    _point(failing, 2, True, 0.5, errors={"arith_l1": "Traceback: final boom"})
    tracker = _Tracker()
    with pytest.raises(EvalFailed, match="(?s)arith_l1.*final boom"):
        finish_eval(tracker, None, plan, failing, "m")
    assert "final boom" in tracker.texts["eval/final_errors.txt"]


def _cfg(*overrides):
    return load_config(None, ["model.name=tiny-llama", "data.task=arith", *overrides])


@pytest.mark.parametrize(("override", "field"), [
    ("eval.suites=[arithh:1]", "eval.suites[0]"), ("eval.general=[ppl]", "eval.general[0]"),
    ("eval.objective={metric: accuracy}", "eval.objective.metric"), ("eval.every_steps=-1", "eval.every_steps"),
    ("eval.objective={metric: eval/a/b, mode: up}", "eval.objective.mode"),
])
def test_bad_eval_sections_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        _cfg(override)
    assert err.value.path == field, str(err.value)


def test_the_plan_checks_the_objective_against_the_real_suite_names_and_defaults_it():
    with pytest.raises(ConfigError, match=r"eval.objective.metric: bad value 'eval/arith_l3/exact_match'.*arith_l1"):
        build_plan(_cfg("eval.suites=[arith:1]", "eval.objective={metric: eval/arith_l3/exact_match}"), None, ".")
    plan = build_plan(_cfg("eval.suites=[arith:1-2]", "eval.general=[arith:2]"), None, ".")
    assert [s.name for s in plan.suites] == ["arith_l1", "arith_l2"] and plan.general == ("arith_l2",)
    assert plan.objective == ("eval/arith_l1/exact_match", "max")
    assert build_plan(_cfg(), None, ".") is None


def test_heldout_loss_is_the_mean_response_token_nll():
    """loss = -(sum of response-token log-probs) / (response tokens), over all rows at once."""
    import torch

    from tunefleet.eval.heldout import Heldout, score_single
    from tunefleet.models.policy import TokenLogpModel
    from tunefleet.models.registry import load_model, load_tokenizer, resolve_model

    tiny_model_dir = resolve_model("tiny-llama")
    tok = load_tokenizer(tiny_model_dir)
    cfg = _cfg()
    rows = [{"input_ids": r["input_ids"], "loss_mask": r["loss_mask"]} for r in _rows(cfg, tok)]
    scorer = TokenLogpModel(load_model(tiny_model_dir)).eval()
    metrics, out, _ = score_single(scorer, Heldout("single", tuple(_rows(cfg, tok)), "x", "d"), tok.pad_token_id, 2)
    total = count = 0.0
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]])
            logp = torch.log_softmax(scorer.lm(input_ids=ids).logits.float(), -1)[0]
            for t in range(1, ids.shape[1]):
                if r["loss_mask"][t]:
                    total += float(logp[t - 1, ids[0, t]])
                    count += 1
    assert metrics["tokens"] == count and metrics["loss"] == pytest.approx(-total / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(-total / count), rel=1e-5)
    assert len(out) == 3


def _rows(cfg, tok):
    from tunefleet.data.formats import to_sft_example
    from tunefleet.data.tokenize import tokenize_sft

    raw = [{"prompt": "Reverse: abc", "completion": "cba"}, {"prompt": "Add 1+1", "completion": "2"},
           {"prompt": "hi", "completion": "hello there"}]
    return [tokenize_sft(tok, to_sft_example(r), 128) for r in raw]
