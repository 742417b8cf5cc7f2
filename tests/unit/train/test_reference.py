"""Reference log-probs: precompute (cached as Arrow) and live (LoRA adapter disabled) both
make the first DPO step see policy == reference, i.e. a loss of exactly ln 2."""

import math

import pytest
import torch

from tunefleet.algorithms import get_loss
from tunefleet.config import LoraConfig
from tunefleet.config.preference import DpoConfig
from tunefleet.data.batching import BATCHERS
from tunefleet.models.policy import build_policy
from tunefleet.models.registry import resolve_model
from tunefleet.train.reference import live_reference, precompute_reference
from tunefleet.train.step import StepContext, count_targets, train_step


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import os

    os.environ.setdefault("TUNEFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    return str(resolve_model("tiny-llama"))


def _pairs():
    g = torch.Generator().manual_seed(3)

    def seq(plen, rlen):
        return {"input_ids": torch.randint(0, 256, (plen + rlen,), generator=g).tolist(),
                "loss_mask": [0] * plen + [1] * rlen}

    return [{"chosen": seq(5, 4 + i), "rejected": seq(5, 6)} for i in range(4)]


def _dpo_step(tiny, rows, lora=None, live=False):
    torch.manual_seed(0)
    policy = build_policy(tiny, "float32", lora, torch.device("cpu"), 1)
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctx = StepContext(policy, opt, sched, get_loss("dpo"), DpoConfig(), torch.device("cpu"), 1, 0.0, False)
    if live:
        ctx.reference = live_reference(tiny, policy, torch.device("cpu"), 1, "float32", bf16=False)
    batch = BATCHERS["pairs"].collate(rows, 0)
    return train_step(ctx, [batch], count_targets(batch), len(rows))


def test_precomputed_reference_gives_ln2_and_is_cached(tiny, tmp_path):
    rows = _pairs()
    path = precompute_reference(rows, tiny, 0, "digest-1", 64, "float32", 2, tmp_path)
    assert path.is_file() and all("ref_seq_logps" in r["chosen"] for r in rows)
    first = [r["chosen"]["ref_seq_logps"] for r in rows]
    again = _pairs()
    assert precompute_reference(again, tiny, 0, "digest-1", 64, "float32", 2, tmp_path) == path
    assert [r["chosen"]["ref_seq_logps"] for r in again] == first  # read back from the Arrow cache
    m = _dpo_step(tiny, rows)
    assert math.isclose(m["loss"], math.log(2), abs_tol=1e-5) and m["rewards/margin"] == pytest.approx(0, abs=1e-4)


def test_live_lora_reference_is_the_adapter_disabled_model(tiny):
    # A fresh LoRA adapter is a no-op (B = 0), so policy == reference at step 0.
    m = _dpo_step(tiny, _pairs(), lora=LoraConfig(r=4, alpha=8), live=True)
    assert math.isclose(m["loss"], math.log(2), abs_tol=1e-5)


def test_dpo_steps_move_the_margin_the_right_way(tiny, tmp_path):
    rows = _pairs()
    precompute_reference(rows, tiny, 0, "digest-2", 64, "float32", 4, tmp_path)
    torch.manual_seed(0)
    policy = build_policy(tiny, "float32", LoraConfig(r=4, alpha=8), torch.device("cpu"), 1)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctx = StepContext(policy, opt, sched, get_loss("dpo"), DpoConfig(beta=0.1), torch.device("cpu"), 1, 1.0, False)
    batch = BATCHERS["pairs"].collate(rows, 0)
    history = [train_step(ctx, [batch], count_targets(batch), len(rows)) for _ in range(8)]
    assert history[-1]["loss"] < history[0]["loss"] - 0.05
    assert history[-1]["rewards/margin"] > 0 and history[-1]["accuracy"] == 1.0
