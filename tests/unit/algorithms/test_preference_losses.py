"""Preference losses against values worked out by hand, plus invariance properties."""

import math

import pytest
import torch

from tunefleet.algorithms import LossInputs, get_loss
from tunefleet.config.preference import (
    CdpoConfig,
    DpoConfig,
    IpoConfig,
    KtoConfig,
    OrpoConfig,
    RewardModelConfig,
    SimpoConfig,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


def _pair_inputs(chosen, rejected, ref=None, n_pairs=None):
    """Sequences as lists of per-token logps (one pair per index); pads with masked zeros."""
    seqs = list(chosen) + list(rejected)
    width = max(len(s) for s in seqs)
    logps = torch.tensor([s + [0.0] * (width - len(s)) for s in seqs], requires_grad=True)
    mask = torch.tensor([[1.0] * len(s) + [0.0] * (width - len(s)) for s in seqs])
    extras = {} if ref is None else {"ref_seq_logps": torch.tensor(ref)}
    n = n_pairs or len(chosen)
    return LossInputs(logps, mask, float(mask.sum()), n, extras)


def test_dpo_is_ln2_when_policy_equals_reference():
    """pi == ref => h = 0 => loss = -log sigmoid(0) = ln 2, for any beta."""
    inp = _pair_inputs([[-1.0, -2.0]], [[-3.0]], ref=[-3.0, -3.0])
    out = get_loss("dpo")(inp, DpoConfig(beta=0.7))
    assert math.isclose(out.loss.item(), math.log(2), rel_tol=1e-6)
    assert out.metrics["accuracy"].item() == 0.0 and out.metrics["rewards/margin"].item() == 0.0


def test_dpo_by_hand():
    """pi_c = -1, ref_c = -2 (delta +1); pi_r = -3, ref_r = -1 (delta -2); beta = 0.5.

    h = 0.5 * (1 - (-2)) = 1.5; loss = -log sigmoid(1.5) = 0.201413; chosen reward 0.5,
    rejected -1.0, margin 1.5, accuracy 1.
    """
    inp = _pair_inputs([[-1.0]], [[-3.0]], ref=[-2.0, -1.0])
    out = get_loss("dpo")(inp, DpoConfig(beta=0.5))
    assert math.isclose(out.loss.item(), -math.log(sig(1.5)), rel_tol=1e-6)
    assert math.isclose(out.metrics["rewards/chosen"].item(), 0.5, rel_tol=1e-6)
    assert math.isclose(out.metrics["rewards/rejected"].item(), -1.0, rel_tol=1e-6)
    assert out.metrics["accuracy"].item() == 1.0


def test_cdpo_by_hand_and_eps_zero_is_dpo():
    """Same pair, eps = 0.2: 0.8 * -log sigmoid(1.5) + 0.2 * -log sigmoid(-1.5) = 0.501413."""
    inp = _pair_inputs([[-1.0]], [[-3.0]], ref=[-2.0, -1.0])
    out = get_loss("cdpo")(inp, CdpoConfig(beta=0.5, eps=0.2))
    want = 0.8 * -math.log(sig(1.5)) + 0.2 * -math.log(sig(-1.5))
    assert math.isclose(out.loss.item(), want, rel_tol=1e-6)
    zero = get_loss("cdpo")(inp, CdpoConfig(beta=0.5, eps=0.0)).loss
    assert math.isclose(zero.item(), get_loss("dpo")(inp, DpoConfig(beta=0.5)).loss.item(), rel_tol=1e-6)


def test_ipo_by_hand():
    """Chosen: 2 tokens, pi = -2, ref = -4 -> (+2)/2 = +1; rejected: 1 token, pi = -3, ref = -2
    -> -1. h = 2; beta = 0.25 -> target 1/(2*0.25) = 2 -> loss (2 - 2)^2 = 0. With beta = 0.5
    the target is 1 -> loss (2 - 1)^2 = 1."""
    inp = _pair_inputs([[-1.0, -1.0]], [[-3.0]], ref=[-4.0, -2.0])
    assert get_loss("ipo")(inp, IpoConfig(beta=0.25)).loss.item() == pytest.approx(0.0, abs=1e-6)
    assert get_loss("ipo")(inp, IpoConfig(beta=0.5)).loss.item() == pytest.approx(1.0, rel=1e-6)


def test_simpo_length_normalisation():
    """Pair A: chosen 1 token (-2), rejected 4 tokens (4 x -0.5 = -2): same totals.
    beta = 2, gamma = 0.5: rewards 2*(-2) = -4 and 2*(-0.5) = -1 -> loss -log sigmoid(-4 + 1 - 0.5)
    = -log sigmoid(-3.5) = 3.529750. Pair B swaps lengths: -log sigmoid(-1 + 4 - 0.5) = 0.078889.
    Without length normalisation both would be -log sigmoid(2*(-2 + 2) - 0.5) = 0.974077."""
    a = get_loss("simpo")(_pair_inputs([[-2.0]], [[-0.5] * 4]), SimpoConfig(beta=2.0, gamma=0.5))
    b = get_loss("simpo")(_pair_inputs([[-0.5] * 4], [[-2.0]]), SimpoConfig(beta=2.0, gamma=0.5))
    assert math.isclose(a.loss.item(), -math.log(sig(-3.5)), rel_tol=1e-6)
    assert math.isclose(b.loss.item(), -math.log(sig(2.5)), rel_tol=1e-6)


def test_orpo_odds_term_by_hand():
    """Chosen mean logp ln 0.5 (p = 0.5, odds 1, log odds 0); rejected ln 0.2 (odds 0.25,
    log odds ln 0.25). log odds ratio = 0 - ln 0.25 = ln 4 = 1.386294; sigmoid = 0.8.
    NLL(chosen) = ln 2. lam = 0.5: loss = ln 2 - 0.5 * ln 0.8 = 0.804719."""
    inp = _pair_inputs([[math.log(0.5), math.log(0.5)]], [[math.log(0.2)]])
    out = get_loss("orpo")(inp, OrpoConfig(lam=0.5))
    assert math.isclose(out.loss.item(), math.log(2) - 0.5 * math.log(0.8), rel_tol=1e-5)
    assert math.isclose(out.metrics["log_odds_ratio"].item(), math.log(0.8), rel_tol=1e-5)


def _kto_inputs(pi, ref, labels, kl, ref_kl):
    logps = torch.tensor([[v] for v in pi], requires_grad=True)
    extras = {"ref_seq_logps": torch.tensor(ref), "kto_label": torch.tensor(labels),
              "kl_logps": torch.tensor(kl), "ref_kl_logps": torch.tensor(ref_kl)}
    return LossInputs(logps, torch.ones(len(pi), 1), float(len(pi)), len(pi), extras)


def test_kto_branches_by_hand():
    """Row 0 desirable: r = -1 - (-2) = 1; row 1 undesirable: r = -3 - (-2) = -1.
    KL rows: mean(-1 - (-1.5), -2 - (-2.5)) = 0.5 = z0. beta = 1, w_d = 1, w_u = 2.
    desirable: 1 - sigmoid(1 - 0.5) = 0.377541; undesirable: 2 (1 - sigmoid(0.5 - (-1))) = 0.364851.
    loss = (0.377541 + 0.364851) / 2 = 0.371196."""
    inp = _kto_inputs([-1.0, -3.0], [-2.0, -2.0], [1.0, 0.0], [-1.0, -2.0], [-1.5, -2.5])
    out = get_loss("kto")(inp, KtoConfig(beta=1.0, undesirable_weight=2.0))
    want = ((1 - sig(0.5)) + 2 * (1 - sig(1.5))) / 2
    assert math.isclose(out.loss.item(), want, rel_tol=1e-6)
    assert math.isclose(out.metrics["kl"].item(), 0.5, rel_tol=1e-6)


def test_kto_baseline_is_clamped_at_zero():
    """KL rows give mean -1 -> z0 = 0: desirable row r = 1 -> 1 - sigmoid(1) = 0.268941."""
    inp = _kto_inputs([-1.0], [-2.0], [1.0], [-3.0], [-2.0])
    out = get_loss("kto")(inp, KtoConfig(beta=1.0))
    assert math.isclose(out.loss.item(), 1 - sig(1.0), rel_tol=1e-6)


def test_reward_model_by_hand():
    """values: chosen [2, 0], rejected [1, 1]: -log sigmoid(1) = 0.313262 and -log sigmoid(-1)
    = 1.313262; mean 0.813262; accuracy 1/2."""
    inp = LossInputs(torch.zeros(4, 1), torch.ones(4, 1), 4.0, 2, values=torch.tensor([2.0, 0.0, 1.0, 1.0]))
    out = get_loss("reward_model")(inp, RewardModelConfig())
    assert math.isclose(out.loss.item(), (-math.log(sig(1)) - math.log(sig(-1))) / 2, rel_tol=1e-6)
    assert out.metrics["accuracy"].item() == 0.5


PAIRWISE = [("dpo", DpoConfig()), ("cdpo", CdpoConfig()), ("ipo", IpoConfig()), ("simpo", SimpoConfig()),
            ("orpo", OrpoConfig())]


def _random_pairs(b=4, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(2 * b, t, generator=g)
    mask = (torch.rand(2 * b, t, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    ref = -torch.rand(2 * b, t, generator=g)
    return logps, mask, ref


@pytest.mark.parametrize("name,cfg", PAIRWISE, ids=[p[0] for p in PAIRWISE])
def test_micro_batches_sum_to_the_whole_batch(name, cfg):
    """4 pairs at once vs 4 micro-batches of 1 pair: same loss, same gradient."""
    logps, mask, ref = _random_pairs()
    b = logps.shape[0] // 2
    whole_lp = logps.clone().requires_grad_(True)
    whole = get_loss(name)(LossInputs(whole_lp, mask, 1.0, b, {"ref_logps": ref}), cfg).loss
    whole.backward()
    parts_lp = logps.clone().requires_grad_(True)
    total = 0
    for i in range(b):
        idx = [i, b + i]
        total = total + get_loss(name)(LossInputs(parts_lp[idx], mask[idx], 1.0, b, {"ref_logps": ref[idx]}), cfg).loss
    total.backward()
    assert torch.allclose(whole, total, atol=1e-6)
    assert torch.allclose(whole_lp.grad, parts_lp.grad, atol=1e-6)


@pytest.mark.parametrize("name,cfg", PAIRWISE[:3], ids=[p[0] for p in PAIRWISE[:3]])
def test_per_token_and_per_sequence_reference_agree(name, cfg):
    logps, mask, ref = _random_pairs()
    a = get_loss(name)(LossInputs(logps, mask, 1.0, 4, {"ref_logps": ref}), cfg).loss
    b = get_loss(name)(LossInputs(logps, mask, 1.0, 4, {"ref_seq_logps": (ref * mask).sum(-1)}), cfg).loss
    assert torch.allclose(a, b, atol=1e-6)
