"""What an RL step trains on and logs: zero-variance groups dropped and topped up only with
freshly sampled groups (else a smaller step), and reward metrics named for what they are.

A fake pool returns scripted completions; the rewards are the real `task` (arith verifier,
answer "7") and `format` (regex "<") terms, weights 1.0 and 0.5, so each text's score is:
"7" -> task 1, format 0, total 1.0; "<7" -> 1, 1, 1.5; "x" -> 0, 0, 0.0; "<x" -> 0, 1, 0.5.
"""

from pathlib import Path

import pytest
import ray

from tunefleet.config import RewardSpec, load_config
from tunefleet.rollout import client
from tunefleet.rollout.samples import Rollout, Sample
from tunefleet.train.rollout_source import RolloutSource

ROOT = Path(__file__).resolve().parents[3]
REWARDS = (RewardSpec("task", 1.0), RewardSpec("format", 0.5, {"pattern": "<"}))


class FakePool:
    """`generate` answers call k with `script[k]`: per prompt, its group's texts. Every
    sample's token id encodes its request id (1000 + 10 * request + j)."""

    def __init__(self, script):
        self.script, self.calls, self.next_id = list(script), [], 0
        self.generate = self.status = self

    def remote(self, prompts=None, sampling=None):
        if prompts is None:  # status.remote()
            return {"version": 0}
        texts = self.script[len(self.calls)]
        self.calls.append([p[0] for p in prompts])
        assert len(texts) == len(prompts)
        out = []
        for group in texts:
            rid, self.next_id = self.next_id, self.next_id + 1
            samples = [Sample([1000 + 10 * rid + j], t, [-0.5], "stop", 0) for j, t in enumerate(group)]
            out.append(Rollout(rid, prompts[0], [], samples, 0, 0))
        return out


def _source(monkeypatch, script, per_step=3, max_resample=2):
    cfg = load_config(ROOT / "jobs" / "configs" / "grpo_arith.yaml",
                      ["model.name=tiny-llama", "algorithm.group_size=2", f"trainer.batch_size={2 * per_step}",
                       "trainer.micro_batch_size=2", "algorithm.drop_zero_variance=true",
                       f"algorithm.max_resample={max_resample}", "rollout.max_staleness=0",
                       "algorithm.rollout_sample_every=0"])
    pool = FakePool(script)
    monkeypatch.setattr(ray, "get", lambda x, **_: x)
    monkeypatch.setattr(client, "get_pool", lambda name, namespace=None: pool)
    prompts = [{"prompt_ids": [i], "prompt": f"p{i}", "answer": "7", "meta": {}} for i in range(16)]
    loop_config = {"pad_id": 0, "data_ref": prompts, "model_dir": "unused", "pool_name": "fake",
                   "rewards": REWARDS}
    return RolloutSource(cfg, loop_config, None, 0, 1), pool


def _trained_requests(plan) -> list[int]:
    """The request id of every row the step trains on (from its response token)."""
    out = []
    for mb in plan.micro_batches:
        for ids, mask in zip(mb["main"]["input_ids"].tolist(), mb["main"]["attention_mask"].tolist()):
            out.append((ids[sum(mask) - 1] - 1000) // 10)
    return out


def test_too_few_fresh_groups_shrink_the_step(monkeypatch):
    """Round 0: [7, x] has signal; [x, x] and [7, 7] are dropped. Round 1 (2 prompts):
    [<7, 7] has signal, [<x, <x] dropped. Round 2 (1 prompt): [x, x] dropped. So 2 groups of
    the 3 asked for, requests 0 and 3, each once: the step shrinks to 4 rows.

    Rewards of all 12 generated samples: 1,0, 0,0, 1,1 | 1.5,1, .5,.5 | 0,0 -> mean 6.5/12;
    task 1,0,0,0,1,1,1,1,0,0,0,0 -> 5/12; format: only <7, <x, <x -> 3/12.
    Kept samples 1, 0, 1.5, 1 -> mean 3.5/4 = 0.875."""
    script = [[["7", "x"], ["x", "x"], ["7", "7"]], [["<7", "7"], ["<x", "<x"]], [["x", "x"]]]
    src, pool = _source(monkeypatch, script)
    plan = src.plan(0)
    assert len(pool.calls) == 3 and [len(c) for c in pool.calls] == [3, 2, 1]
    assert sorted(_trained_requests(plan)) == [0, 0, 3, 3]
    assert plan.num_sequences == 4
    m = plan.metrics
    assert (m["groups_kept"], m["groups_dropped"], m["groups_generated"], m["step_shrunk"]) == (2.0, 4.0, 6.0, 1.0)
    assert m["reward/mean_all"] == pytest.approx(6.5 / 12) and m["reward_mean"] == pytest.approx(6.5 / 12)
    assert m["reward/mean_kept"] == pytest.approx(0.875)
    assert m["reward/task"] == pytest.approx(5 / 12) and m["accuracy"] == pytest.approx(5 / 12)
    assert m["reward/format"] == pytest.approx(3 / 12)


def test_dropped_groups_are_replaced_by_fresh_ones(monkeypatch):
    """Round 0: [x, x] (request 1) is dropped; round 1's [<x, x] (request 3) replaces it.
    The step has its 3 groups, none of them the dropped one.

    All 8 samples: task 1,0 | 0,0 | 1,1 | 0,0 -> 3/8; format 0,0 | 0,0 | 0,1 | 1,0 -> 2/8;
    totals 1,0, 0,0, 1,1.5, 0.5,0 -> 4/8. Kept: 1,0, 1,1.5, 0.5,0 -> 4/6."""
    script = [[["7", "x"], ["x", "x"], ["7", "<7"]], [["<x", "x"]]]
    src, _ = _source(monkeypatch, script)
    plan = src.plan(0)
    assert sorted(_trained_requests(plan)) == [0, 0, 2, 2, 3, 3]
    m = plan.metrics
    assert (m["groups_kept"], m["groups_dropped"], m["groups_generated"], m["step_shrunk"]) == (3.0, 1.0, 4.0, 0.0)
    assert m["reward/task"] == pytest.approx(3 / 8) and m["reward/format"] == pytest.approx(2 / 8)
    assert m["reward/mean_all"] == pytest.approx(4 / 8) and m["reward/mean_kept"] == pytest.approx(4 / 6)


def test_a_step_without_signal_trains_on_nothing(monkeypatch):
    """Every group of both rounds is zero-variance: no row is trained on (the loss's global
    counts are 0 and the update is a no-op), and the metrics say so. All 12 samples: task
    1 on the two [7, 7] groups -> 4/12; totals 1,1 twice and 0.5,0.5 once -> 5/12."""
    script = [[["x", "x"], ["7", "7"], ["<x", "<x"]], [["x", "x"], ["x", "x"], ["7", "7"]]]
    src, _ = _source(monkeypatch, script, max_resample=1)
    plan = src.plan(0)
    assert plan.micro_batches == [] and plan.num_sequences == 0 and plan.num_tokens == 0
    m = plan.metrics
    assert (m["groups_kept"], m["groups_dropped"], m["step_shrunk"]) == (0.0, 6.0, 1.0)
    assert "reward/mean_kept" not in m
    assert m["reward/task"] == pytest.approx(4 / 12) and m["reward/mean_all"] == pytest.approx(5 / 12)
