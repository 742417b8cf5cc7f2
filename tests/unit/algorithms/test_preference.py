"""Preference losses: gradients by hand, KTO invariance, metric sums, and the config variants.

The loss values by hand (DPO ln 2, cDPO, IPO, SimPO lengths, ORPO odds, KTO branches) and
the pairwise micro-batch / reference-format properties live in test_preference_losses.py;
this file covers what that one does not.
"""

import math

import pytest
import torch

from tunefleet.algorithms import LOSSES, LossInputs, get_loss
from tunefleet.algorithms.preference import reference_seq_logps, split_pairs
from tunefleet.config import ConfigError, config_from_dict
from tunefleet.config.preference import (
    PREFERENCE_CONFIGS,
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


def _random(rows=8, t=5, seed=0):
    """Per-token policy logps, mask (first token always counted) and reference logps [rows, t]."""
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(rows, t, generator=g)
    mask = (torch.rand(rows, t, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    return logps * mask, mask, -torch.rand(rows, t, generator=g) * mask


# ---- helpers ---------------------------------------------------------------------------


def test_split_pairs_and_reference_formats():
    """Rows [c0, c1, r0, r1] -> ([c0, c1], [r0, r1]); per-token ref [[-1, -2, pad]] sums to -3."""
    c, r = split_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert c.tolist() == [1.0, 2.0] and r.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="even"):
        split_pairs(torch.zeros(3))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    tok = LossInputs(torch.zeros(1, 3), mask, 2.0, 1, {"ref_logps": torch.tensor([[-1.0, -2.0, 0.0]])})
    assert reference_seq_logps(tok).tolist() == [-3.0]
    with pytest.raises(KeyError, match="ref_seq_logps"):
        reference_seq_logps(LossInputs(torch.zeros(1, 3), mask, 2.0, 1))


# ---- gradients by hand -----------------------------------------------------------------


def test_dpo_gradient_by_hand():
    """One pair, policy == reference, beta = 0.7: h = 0, dL/dh = -sigmoid(-h) = -1/2.

    dh/dlogp = +beta on each counted chosen token and -beta on each counted rejected token,
    so the gradient is -0.35 on chosen tokens, +0.35 on rejected ones, 0 on padding.
    With num_sequences = 2 (the step has another pair elsewhere) everything halves.
    """
    logps = torch.tensor([[-1.0, -2.0], [-3.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    inp = LossInputs(logps, mask, 3.0, 2, {"ref_seq_logps": torch.tensor([-3.0, -3.0])})
    out = get_loss("dpo")(inp, DpoConfig(beta=0.7))
    out.loss.backward()
    assert math.isclose(out.loss.item(), math.log(2) / 2, rel_tol=1e-6)
    assert torch.allclose(logps.grad, torch.tensor([[-0.175, -0.175], [0.175, 0.0]]))


def test_orpo_is_finite_when_the_chosen_response_is_certain():
    """Chosen mean logp 0 (p = 1, odds infinite) must not give inf/nan loss or gradients."""
    logps = torch.tensor([[0.0], [math.log(0.5)]], requires_grad=True)
    out = get_loss("orpo")(LossInputs(logps, torch.ones(2, 1), 2.0, 1), OrpoConfig(lam=1.0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logps.grad).all()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-5)  # NLL 0, odds term ~ -log sigmoid(13.8)


# ---- metrics are contributions ----------------------------------------------------------

PAIRWISE = [("dpo", DpoConfig()), ("cdpo", CdpoConfig()), ("ipo", IpoConfig()), ("simpo", SimpoConfig()),
            ("orpo", OrpoConfig())]


@pytest.mark.parametrize("name,cfg", PAIRWISE, ids=[p[0] for p in PAIRWISE])
def test_pairwise_metrics_of_micro_batches_sum_to_the_whole(name, cfg):
    """4 pairs at once vs 4 micro-batches of one pair: every metric adds up to the batch mean."""
    logps, mask, ref = _random()
    whole = get_loss(name)(LossInputs(logps, mask, 1.0, 4, {"ref_logps": ref}), cfg).metrics
    parts = [get_loss(name)(LossInputs(logps[[i, 4 + i]], mask[[i, 4 + i]], 1.0, 4, {"ref_logps": ref[[i, 4 + i]]}),
                            cfg).metrics for i in range(4)]
    assert set(whole) >= {"rewards/chosen", "rewards/rejected", "rewards/margin", "accuracy"}
    for key, value in whole.items():
        assert torch.allclose(value, sum(p[key] for p in parts), atol=1e-6), key
    assert 0.0 <= whole["accuracy"].item() <= 1.0


# ---- KTO --------------------------------------------------------------------------------


def _kto(logps, mask, ref_key, ref, n, rows=slice(None), kl_delta=0.3):
    """KTO inputs for `rows` of a step; labels alternate 1, 0, ... Every mismatched pair has
    log-ratio `kl_delta`, so z0 is the same in any micro-batch (called alone, the loss takes
    its micro-batch as the whole step; the step passes the step-wide z0, see
    tests/unit/train/test_kto_invariance.py)."""
    b = ref.shape[0]
    ref_kl = -torch.arange(1.0, b + 1)
    extras = {ref_key: ref, "kto_label": torch.arange(b).remainder(2).eq(0).float(),
              "kl_logps": ref_kl + kl_delta, "ref_kl_logps": ref_kl}
    extras = {k: v[rows] for k, v in extras.items()}
    return LossInputs(logps[rows], mask[rows], float(mask.sum()), n, extras)


def test_kto_micro_batches_sum_to_the_whole_batch():
    """4 rows at once vs 4 micro-batches of one row (num_sequences = 4): same loss, gradient, kl."""
    logps, mask, ref = _random(rows=4)
    cfg = KtoConfig(beta=0.5, undesirable_weight=1.5)
    whole_lp = logps.clone().requires_grad_(True)
    whole = get_loss("kto")(_kto(whole_lp, mask, "ref_logps", ref, 4), cfg)
    whole.loss.backward()
    parts_lp = logps.clone().requires_grad_(True)
    outs = []
    for i in range(4):
        outs.append(get_loss("kto")(_kto(parts_lp, mask, "ref_logps", ref, 4, rows=slice(i, i + 1)), cfg))
    total = sum(o.loss for o in outs)
    total.backward()
    assert torch.allclose(whole.loss, total, atol=1e-6)
    assert torch.allclose(whole_lp.grad, parts_lp.grad, atol=1e-6)
    assert torch.allclose(whole.metrics["kl"], sum(o.metrics["kl"] for o in outs), atol=1e-6)
    assert whole.metrics["kl"].item() == pytest.approx(0.3, rel=1e-5)


def test_kto_per_token_and_per_sequence_reference_agree():
    logps, mask, ref = _random(rows=4)
    a = get_loss("kto")(_kto(logps, mask, "ref_logps", ref, 4), KtoConfig())
    b = get_loss("kto")(_kto(logps, mask, "ref_seq_logps", (ref * mask).sum(-1), 4), KtoConfig())
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    for key in a.metrics:
        assert torch.allclose(a.metrics[key], b.metrics[key], atol=1e-6), key


def test_kto_metrics_by_hand_and_baseline_is_detached():
    """Rows: desirable r = -1 - (-2) = 1, undesirable r = -3 - (-2) = -1; beta = 1.
    KL pairs: mean(-1 - (-1.5), -2 - (-2.5)) = 0.5 = z0. Batch-local means (this micro-batch
    is the whole step, share 2/2): rewards/chosen = 1, rewards/rejected = -1, kl = 0.5.
    z0 is a baseline, not a target: no gradient reaches kl_logps."""
    kl = torch.tensor([-1.0, -2.0], requires_grad=True)
    extras = {"ref_seq_logps": torch.tensor([-2.0, -2.0]), "kto_label": torch.tensor([1.0, 0.0]),
              "kl_logps": kl, "ref_kl_logps": torch.tensor([-1.5, -2.5])}
    logps = torch.tensor([[-1.0], [-3.0]], requires_grad=True)
    out = get_loss("kto")(LossInputs(logps, torch.ones(2, 1), 2.0, 2, extras), KtoConfig(beta=1.0))
    out.loss.backward()
    assert out.metrics["rewards/chosen"].item() == pytest.approx(1.0)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-1.0)
    assert out.metrics["kl"].item() == pytest.approx(0.5)
    assert kl.grad is None
    # d/dr (1 - sigmoid(r - z0)) = -sigmoid'(0.5); d/dr (1 - sigmoid(z0 - r)) = +sigmoid'(1.5); / 2 rows
    d = lambda x: sig(x) * (1 - sig(x))  # noqa: E731
    assert torch.allclose(logps.grad, torch.tensor([[-d(0.5) / 2], [d(1.5) / 2]]))


# ---- configs ----------------------------------------------------------------------------

LAYOUT = {  # tag: (BATCH, NEEDS_REFERENCE, VALUE_HEAD)
    "dpo": ("pairs", True, False), "cdpo": ("pairs", True, False), "ipo": ("pairs", True, False),
    "simpo": ("pairs", False, False), "orpo": ("pairs", False, False), "kto": ("kto", True, False),
    "reward_model": ("pairs", False, True),
}


@pytest.mark.parametrize("tag", sorted(LAYOUT))
def test_config_metadata_and_registry(tag):
    cls = PREFERENCE_CONFIGS[tag]
    assert (cls.BATCH, cls.NEEDS_REFERENCE, cls.VALUE_HEAD) == LAYOUT[tag]
    assert cls().type == tag and tag in LOSSES


def test_config_defaults():
    assert DpoConfig().beta == 0.1 and IpoConfig().beta == 0.1
    assert (CdpoConfig().beta, CdpoConfig().eps) == (0.1, 0.1)
    assert (SimpoConfig().beta, SimpoConfig().gamma) == (2.0, 1.0)
    assert OrpoConfig().lam == 0.1
    assert (KtoConfig().beta, KtoConfig().desirable_weight, KtoConfig().undesirable_weight) == (0.1, 1.0, 1.0)
    assert RewardModelConfig().center_rewards_coef == 0.0


def _cfg(algorithm, **sections):
    return config_from_dict({"model": {"name": "tiny-llama"}, "data": {"task": "arith"}, "algorithm": algorithm,
                             **sections})


def test_configs_build_from_yaml_mappings():
    assert _cfg({"type": "orpo", "lam": 0.3}).algorithm == OrpoConfig(lam=0.3)
    assert _cfg({"type": "cdpo", "beta": 1, "eps": 0.25}).algorithm == CdpoConfig(beta=1.0, eps=0.25)
    assert _cfg({"type": "kto"}, reference={"mode": "live"}).algorithm == KtoConfig()


BAD = [
    ({"type": "dpo", "beta": 0}, "algorithm.beta", "> 0"),
    ({"type": "cdpo", "eps": 0.5}, "algorithm.eps", "0 <= eps < 0.5"),
    ({"type": "cdpo", "eps": -0.1}, "algorithm.eps", "0 <= eps < 0.5"),
    ({"type": "simpo", "gamma": -1}, "algorithm.gamma", ">= 0"),
    ({"type": "orpo", "lambda": 0.3}, "algorithm.lambda", "unknown key"),  # the YAML key is `lam`
    ({"type": "orpo", "lam": -1}, "algorithm.lam", ">= 0"),
    ({"type": "kto", "undesirable_weight": 0}, "algorithm.undesirable_weight", "> 0"),
    ({"type": "reward_model", "center_rewards_coef": -0.01}, "algorithm.center_rewards_coef", ">= 0"),
    ({"type": "ipo", "beta": "big"}, "algorithm.beta", "expected float"),
]


@pytest.mark.parametrize("algorithm,field,hint", BAD, ids=[f"{b[0]['type']}-{b[1]}" for b in BAD])
def test_bad_preference_configs_name_the_field(algorithm, field, hint):
    with pytest.raises(ConfigError) as info:
        _cfg(algorithm)
    assert field in str(info.value) and hint in str(info.value), str(info.value)


def test_kto_needs_a_live_reference():
    """KTO's KL baseline scores mismatched pairs formed per batch, which no precompute pass sees."""
    with pytest.raises(ConfigError, match="reference.mode"):
        _cfg({"type": "kto"}, reference={"mode": "precompute"})
