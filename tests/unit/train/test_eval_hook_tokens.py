"""Eval points at token budget points (`eval.every_tokens`) and what a campaign trial
reports to Ray Tune from them (train/eval_hook.py)."""

from types import SimpleNamespace

import pytest
import ray.train

from tunefleet.config import load_config
from tunefleet.train.eval_hook import EvalHook


def _hook(monkeypatch, every_tokens: int, every_steps: int = 0, steps: int = 10, report: bool = False):
    cfg = load_config(None, ["model.name=tiny-llama", f"trainer.max_steps={steps}", "trainer.batch_size=4",
                             "trainer.micro_batch_size=4", f"eval.every_tokens={every_tokens}"])
    hook = EvalHook(cfg, {"model_dir": "m", "report_evals": report}, SimpleNamespace(world=1), 0, None)
    hook.plan = SimpleNamespace(names=lambda: ["arith_l1"], every_steps=every_steps)
    points = []
    monkeypatch.setattr(hook, "_point", lambda step, names: points.append((step, hook.tokens)))
    return hook, points


def test_points_when_tokens_cross_each_multiple_of_every_tokens(monkeypatch):
    """every_tokens=100, cumulative tokens 40, 90, 130, 250, 260, 299, 300 at steps 1..7:
    130 crosses 100 (step 3), 250 crosses 200 (step 4: one point although 250 is also past
    nothing else), 300 reaches 300 (step 7); step 10 is the last step."""
    hook, points = _hook(monkeypatch, 100)
    for step, tokens in enumerate([40, 90, 130, 250, 260, 299, 300, 310, 320, 330], 1):
        hook.after_step(step, tokens)
    assert points == [(3, 130), (4, 250), (7, 300), (10, 330)]


def test_a_step_crossing_several_multiples_makes_one_point(monkeypatch):
    hook, points = _hook(monkeypatch, 10, steps=5)
    for step, tokens in enumerate([35, 36, 41, 70, 71], 1):
        hook.after_step(step, tokens)
    assert points == [(1, 35), (3, 41), (4, 70), (5, 71)]


def test_every_tokens_zero_keeps_the_step_schedule(monkeypatch):
    hook, points = _hook(monkeypatch, 0, every_steps=4)
    for step in range(1, 11):
        hook.after_step(step, 1000 * step)
    assert [s for s, _ in points] == [4, 8, 10]


@pytest.mark.parametrize("report", [True, False])
def test_a_trial_reports_each_point_to_tune_with_tokens_step_and_final(monkeypatch, report):
    hook, _ = _hook(monkeypatch, 0, steps=6, report=report)
    sent = []
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kw: sent.append(metrics))
    hook.tokens = 44
    hook._report({"eval/ppl_x/word_perplexity": 3.5}, 4)
    hook.tokens = 66
    hook._report({"eval/ppl_x/word_perplexity": 3.0}, 6)
    expected = [{"eval/ppl_x/word_perplexity": 3.5, "step": 4, "train_tokens": 44, "final": False},
                {"eval/ppl_x/word_perplexity": 3.0, "step": 6, "train_tokens": 66, "final": True}]
    assert sent == (expected if report else [])
