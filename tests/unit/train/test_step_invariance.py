"""The training step in-process (no Ray): grad-accumulation invariance, packing
equivalence, and the selective LM head against a plain full-logits computation."""

import copy

import pytest
import torch

from tunefleet.algorithms import get_loss
from tunefleet.config import LoraConfig, SftConfig
from tunefleet.config.preference import DpoConfig, OrpoConfig, SimpoConfig
from tunefleet.data import collate, pack_examples
from tunefleet.data.batching import BATCHERS
from tunefleet.models.policy import build_policy
from tunefleet.models.registry import resolve_model
from tunefleet.train.step import StepContext, count_targets, train_step


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import os

    os.environ.setdefault("TUNEFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    return str(resolve_model("tiny-llama"))


def _rows(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        plen, rlen = 5 + i, 3 + 2 * i
        ids = torch.randint(0, 256, (plen + rlen,), generator=g).tolist()
        rows.append({"input_ids": ids, "loss_mask": [0] * plen + [1] * rlen})
    return rows


SFT = SftConfig()


def _ctx(tiny, lora=None, algo=SFT):
    torch.manual_seed(0)
    policy = build_policy(tiny, "float32", lora, torch.device("cpu"), 1)
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return StepContext(policy, opt, sched, get_loss(algo.type), algo, torch.device("cpu"), 1, 0.0, False)


def _params(ctx):
    return {n: p.detach().clone() for n, p in ctx.policy.module.named_parameters()}


@pytest.mark.parametrize("lora", [None, LoraConfig(r=4, alpha=8)])
def test_grad_accumulation_invariance(tiny, lora):
    """One batch as 1 micro-batch x 4 or as 4 x 1 gives the same loss and the same update."""
    rows = _rows()
    a, b = _ctx(tiny, lora), _ctx(tiny, lora)
    single = BATCHERS["single"].collate
    whole = [single(rows, 0)]
    split = [single([r], 0) for r in rows]
    n = count_targets(whole[0])
    assert n == sum(count_targets(m) for m in split) == sum(sum(r["loss_mask"][1:]) for r in rows)
    ma, mb = train_step(a, whole, n, 4), train_step(b, split, n, 4)
    assert abs(ma["loss"] - mb["loss"]) < 1e-6 and abs(ma["grad_norm"] - mb["grad_norm"]) < 1e-5
    pa, pb = _params(a), _params(b)
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)


def test_selective_head_matches_full_logits(tiny):
    ctx = _ctx(tiny)
    batch = collate(_rows(), 0)
    logps = ctx.policy.module(input_ids=batch["input_ids"], labels=batch["labels"])
    lm = ctx.policy.module.lm
    logits = lm(input_ids=batch["input_ids"]).logits.float()
    sel = batch["labels"] != -100
    ref = torch.log_softmax(logits, -1).gather(-1, batch["labels"].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logps[sel], ref[sel], atol=1e-5)
    assert (logps[~sel] == 0).all()


def test_packed_rows_give_the_same_loss_as_padded_rows(tiny):
    ctx = _ctx(tiny)
    rows = _rows()
    padded = collate(rows, 0)
    packed = collate(pack_examples(copy.deepcopy(rows), 64), 0)
    assert packed["input_ids"].shape[0] < len(rows)
    lp = ctx.policy.module(input_ids=padded["input_ids"], labels=padded["labels"],
                           position_ids=padded["position_ids"])
    lk = ctx.policy.module(input_ids=packed["input_ids"], labels=packed["labels"],
                           position_ids=packed["position_ids"])
    assert count_targets(padded) == count_targets(packed)
    assert torch.allclose(lp.sum(), lk.sum(), atol=1e-4)


@pytest.mark.parametrize("algo", [DpoConfig(beta=0.5), SimpoConfig(), OrpoConfig(lam=0.3)], ids=lambda a: a.type)
def test_pairwise_grad_accumulation_invariance(tiny, algo):
    """4 pairs as 1 micro-batch x 4 or 4 x 1: same loss, same update (through the model)."""
    rows = [{"chosen": {**r, "ref_seq_logps": -30.0}, "rejected": {**s, "ref_seq_logps": -31.0}}
            for r, s in zip(_rows(4, seed=1), _rows(4, seed=2))]
    pairs = BATCHERS["pairs"]
    a, b = _ctx(tiny, algo=algo), _ctx(tiny, algo=algo)
    whole = [pairs.collate(rows, 0)]
    n = count_targets(whole[0])
    ma = train_step(a, whole, n, 4)
    mb = train_step(b, [pairs.collate([r], 0) for r in rows], n, 4)
    assert abs(ma["loss"] - mb["loss"]) < 1e-6 and abs(ma["accuracy"] - mb["accuracy"]) < 1e-9
    pa, pb = _params(a), _params(b)
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)
