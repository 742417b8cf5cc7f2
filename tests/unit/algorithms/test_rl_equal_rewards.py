"""Groups (or batches) whose rewards are all equal carry no learning signal: every estimator
must give them an advantage of exactly 0, not the float32 rounding residue of a mean
divided by `std + eps` (which reached |A| ~ 0.1, all of one sign: a spurious gradient)."""

import pytest
import torch

from tunefleet.algorithms.rl import AdvantageInputs, grpo_advantages, reinforce_pp_advantages, rloo_advantages
from tunefleet.config.rl import GrpoConfig, ReinforcePPConfig, RlooConfig

VALUES = [0.9, 1.7, 0.1, 0.3, 2.6]
SIZES = [3, 4, 5, 8]


def _ragged_mask(n, width=5):
    """Responses of lengths 1..width cycling, so rows differ in token count."""
    m = torch.zeros(n, width)
    for i in range(n):
        m[i, : 1 + i % width] = 1.0
    return m


@pytest.mark.parametrize("G", SIZES)
@pytest.mark.parametrize("value", VALUES)
def test_grpo_equal_group_is_exactly_zero(value, G):
    """r = [v] * G: mean v, std 0 -> A = 0 / (0 + eps) = 0 exactly. In float32 the mean of
    3 x 0.9 rounds to 0.9 + 6e-8 and (r - mean) / eps gave A = 0.0555 for every sample."""
    mask = _ragged_mask(G)
    for scale in (True, False):
        adv = grpo_advantages(AdvantageInputs(torch.full((G,), value), mask, G), GrpoConfig(group_size=G,
                                                                                             scale_by_std=scale))
        assert torch.equal(adv, torch.zeros_like(mask)), (value, G, scale, adv[:, 0].tolist())


@pytest.mark.parametrize("G", SIZES)
@pytest.mark.parametrize("value", VALUES)
def test_rloo_equal_group_is_exactly_zero(value, G):
    """r = [v] * G: every baseline (sum - r_i) / (G - 1) = v, so A = v - v = 0 exactly (the
    float32 sum - r_i rounded, leaving +-6e-8)."""
    mask = _ragged_mask(G)
    adv = rloo_advantages(AdvantageInputs(torch.full((G,), value), mask, G), RlooConfig(group_size=G))
    assert torch.equal(adv, torch.zeros_like(mask)), (value, G, adv[:, 0].tolist())


@pytest.mark.parametrize("G", SIZES)
@pytest.mark.parametrize("value", VALUES)
def test_reinforce_pp_equal_returns_are_exactly_zero(value, G):
    """kl_beta = 0 and every reward v: every response token's return is v, the batch mean is
    v and the std 0 -> whitened A = 0 exactly (was up to 0.106 for v = 1.7). The same when
    the KL is given but all zero (returns still all v)."""
    n = 2 * G
    mask = _ragged_mask(n)
    rewards = torch.full((n,), value)
    cfg = ReinforcePPConfig(group_size=G, kl_beta=0.0)
    adv = reinforce_pp_advantages(AdvantageInputs(rewards, mask, G), cfg)
    assert torch.equal(adv, torch.zeros_like(mask)), (value, G, adv.abs().max().item())
    adv = reinforce_pp_advantages(AdvantageInputs(rewards, mask, G, kl=torch.zeros_like(mask)),
                                  ReinforcePPConfig(group_size=G, kl_beta=0.5))
    assert torch.equal(adv, torch.zeros_like(mask))


def test_equal_groups_beside_informative_ones():
    """G = 3, three groups: [0.9, 0.9, 0.9] -> 0 exactly; [0, 3, 6] -> (r - 3) / (3 + eps)
    = [-1, 0, 1] (eps = 1e-6: -0.99999967 ...); [1.7, 1.7, 0.1] -> mean 7/6 = 1.1666...,
    deviations [0.5333, 0.5333, -1.0667], std = sqrt((0.2844 * 2 + 1.1378) / 2) = 0.923760
    -> [0.577350, 0.577350, -1.154701]. RLOO: 0; [-4.5, 0, 4.5]; [0.8, 0.8, -1.6]."""
    rewards = torch.tensor([0.9, 0.9, 0.9, 0.0, 3.0, 6.0, 1.7, 1.7, 0.1])
    mask = _ragged_mask(9, 3)
    grpo = grpo_advantages(AdvantageInputs(rewards, mask, 3), GrpoConfig(group_size=3))
    assert torch.equal(grpo[:3], torch.zeros(3, 3))
    want = torch.tensor([-1.0, 0.0, 1.0, 0.577350, 0.577350, -1.154701])
    assert torch.allclose(grpo[3:, 0], want, atol=1e-5)
    rloo = rloo_advantages(AdvantageInputs(rewards, mask, 3), RlooConfig(group_size=3))
    assert torch.equal(rloo[:3], torch.zeros(3, 3))
    assert torch.allclose(rloo[3:, 0], torch.tensor([-4.5, 0.0, 4.5, 0.8, 0.8, -1.6]), atol=1e-5)
    # the two equal rewards of the last group share one advantage, to the bit
    assert grpo[6, 0] == grpo[7, 0] and rloo[6, 0] == rloo[7, 0]


def test_reinforce_pp_varied_returns_keep_their_values():
    """Equal rewards but a KL term that differs per token: returns differ, so whitening
    still applies (the zero case is only for returns that are all equal).
    mask [[1, 1], [1, 0]], rewards [1, 1], kl [[1, 0], [0, 0]], beta 1:
    row 0 token rewards [-1, 1] -> returns [0, 1]; row 1 [1] -> returns [1].
    mean 2/3; deviations [-2/3, 1/3, 1/3]; unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3
    -> A = [-1.154701, 0.577350], [0.577350]."""
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = reinforce_pp_advantages(AdvantageInputs(torch.tensor([1.0, 1.0]), mask, 1,
                                                  kl=torch.tensor([[1.0, 0.0], [0.0, 0.0]])),
                                  ReinforcePPConfig(group_size=1, kl_beta=1.0))
    assert torch.allclose(adv, torch.tensor([[-1.154701, 0.577350], [0.577350, 0.0]]), atol=1e-5)
