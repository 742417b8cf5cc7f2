"""Online-RL advantage estimators (GRPO, RLOO, REINFORCE++) and KL estimators: values worked
out by hand, a plain-loop reference for the vectorised code, and the basic properties."""

import math

import pytest
import torch

from tunefleet.algorithms.rl import (
    ADVANTAGES,
    AdvantageInputs,
    get_advantage,
    grpo_advantages,
    kl_estimate,
    reinforce_pp_advantages,
    rloo_advantages,
)
from tunefleet.config.rl import GrpoConfig, ReinforcePPConfig, RlooConfig


def _mask(lengths, width, starts=None):
    """[N, width] float mask with `lengths[i]` ones starting at `starts[i]` (default 0)."""
    starts = starts or [0] * len(lengths)
    m = torch.zeros(len(lengths), width)
    for i, (s, n) in enumerate(zip(starts, lengths)):
        m[i, s:s + n] = 1.0
    return m


# ---------------------------------------------------------------- hand-computed values

def test_grpo_by_hand_with_std_scaling():
    """G = 3, two groups, eps = 1 (large on purpose, so it visibly enters the denominator).

    group 0: r = [0, 3, 6]: mean 3, r - mean = [-3, 0, 3]; unbiased var = (9 + 0 + 9) / 2 = 9,
             std 3 -> A = [-3, 0, 3] / (3 + 1) = [-0.75, 0, 0.75].
             (The biased std sqrt(6) = 2.449 would give +-0.869.)
    group 1: r = [4, 0, 2]: mean 2, r - mean = [2, -2, 0]; var = (4 + 4 + 0) / 2 = 4, std 2
             -> A = [2, -2, 0] / 3 = [0.6667, -0.6667, 0].
    Each row's value is broadcast over its response tokens and is 0 off the mask.
    """
    rewards = torch.tensor([0.0, 3.0, 6.0, 4.0, 0.0, 2.0])
    mask = _mask([1, 2, 3, 3, 1, 2], 4, starts=[1, 0, 1, 0, 3, 2])
    adv = grpo_advantages(AdvantageInputs(rewards, mask, 3), GrpoConfig(group_size=3, eps=1.0))
    seq = torch.tensor([-0.75, 0.0, 0.75, 2 / 3, -2 / 3, 0.0])
    assert adv.shape == mask.shape
    assert torch.allclose(adv, seq[:, None] * mask, atol=1e-6)


def test_grpo_by_hand_without_std_scaling():
    """scale_by_std=False (Dr. GRPO): A = r - mean_g only. Same rewards as above:
    [-3, 0, 3] and [2, -2, 0]; eps plays no part."""
    rewards = torch.tensor([0.0, 3.0, 6.0, 4.0, 0.0, 2.0])
    mask = _mask([2, 2, 1, 3, 3, 1], 3)
    cfg = GrpoConfig(group_size=3, scale_by_std=False, eps=1.0)
    adv = grpo_advantages(AdvantageInputs(rewards, mask, 3), cfg)
    seq = torch.tensor([-3.0, 0.0, 3.0, 2.0, -2.0, 0.0])
    assert torch.allclose(adv, seq[:, None] * mask, atol=1e-6)


def test_rloo_by_hand():
    """G = 3. Baseline of sample i = mean of the other two = (sum_g - r_i) / 2.

    group 0: r = [1, 2, 6], sum 9: baselines [4, 3.5, 1.5] -> A = [-3, -1.5, 4.5]
             (= G/(G-1) * (r - mean) = 1.5 * [-2, -1, 3]).
    group 1: r = [0, 0, 3], sum 3: baselines [1.5, 1.5, 0] -> A = [-1.5, -1.5, 3].
    """
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    mask = _mask([3, 1, 2, 2, 3, 1], 3)
    adv = rloo_advantages(AdvantageInputs(rewards, mask, 3), RlooConfig(group_size=3))
    seq = torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    assert torch.allclose(adv, seq[:, None] * mask, atol=1e-6)


def test_rloo_group_of_two():
    """G = 2: A = r_i - r_other -> r = [3, 1] gives [2, -2]."""
    adv = rloo_advantages(AdvantageInputs(torch.tensor([3.0, 1.0]), torch.ones(2, 1), 2), RlooConfig(group_size=2))
    assert torch.allclose(adv, torch.tensor([[2.0], [-2.0]]))


def test_reinforce_pp_by_hand_no_kl():
    """kl_beta = 0: every response token's return is the sequence reward; then whitened over
    all response tokens of the batch with the unbiased std.

    row 0: mask [0, 0, 1, 0] (one token at position 2), reward 3 -> returns [_, _, 3, _]
    row 1: mask [0, 1, 1, 1], reward -1 -> returns [_, -1, -1, -1]
    row 2: empty response (mask all 0), reward 5 -> contributes nothing.
    Masked returns: 3, -1, -1, -1: n = 4, mean 0, sum of squares 12, unbiased var 12 / 3 = 4,
    std 2 -> A = [1.5] and [-0.5, -0.5, -0.5]. (Biased std sqrt(3) would give 1.732 / -0.577.)
    """
    mask = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    rewards = torch.tensor([3.0, -1.0, 5.0])
    cfg = ReinforcePPConfig(group_size=1, kl_beta=0.0)
    adv = reinforce_pp_advantages(AdvantageInputs(rewards, mask, 1), cfg)
    want = torch.tensor([[0, 0, 1.5, 0], [0, -0.5, -0.5, -0.5], [0, 0, 0, 0]])
    assert torch.allclose(adv, want, atol=1e-5)
    # the KL is ignored when beta is 0, even if given
    with_kl = reinforce_pp_advantages(AdvantageInputs(rewards, mask, 1, kl=torch.rand(3, 4)), cfg)
    assert torch.allclose(with_kl, want, atol=1e-5)


def test_reinforce_pp_by_hand_with_kl():
    """kl_beta = 0.5; token reward -0.5 * kl_t on response tokens, + the sequence reward on the
    last response token; returns-to-go with gamma 1; KL off the mask is ignored.

    row 0: mask [0, 1, 1, 1], kl [9, 1, 2, 3], reward 1:
        token rewards [_, -0.5, -1, -1.5 + 1 = -0.5] -> returns [_, -2, -1.5, -0.5]
    row 1: mask [1, 1, 0, 0], kl [2, 4, 7, 7], reward 3:
        token rewards [-1, -2 + 3 = 1, _, _] -> returns [0, 1, _, _]
    Masked returns -2, -1.5, -0.5, 0, 1: n = 5, sum -3, mean -0.6;
    deviations -1.4, -0.9, 0.1, 0.6, 1.6; squares 1.96 + 0.81 + 0.01 + 0.36 + 2.56 = 5.7;
    unbiased var 5.7 / 4 = 1.425, std 1.193734 -> A = deviation / std.
    """
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    kl = torch.tensor([[9.0, 1.0, 2.0, 3.0], [2.0, 4.0, 7.0, 7.0]])
    rewards = torch.tensor([1.0, 3.0])
    cfg = ReinforcePPConfig(group_size=2, kl_beta=0.5)
    adv = reinforce_pp_advantages(AdvantageInputs(rewards, mask, 2, kl=kl), cfg)
    std = math.sqrt(1.425)
    want = torch.tensor([[0.0, -1.4, -0.9, 0.1], [0.6, 1.6, 0.0, 0.0]]) / std
    assert torch.allclose(adv, want, atol=1e-5)
    # whitened: mean 0 and unbiased std 1 over the response tokens
    vals = adv[mask > 0]
    assert abs(vals.mean().item()) < 1e-6 and vals.std().item() == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------- plain-loop references

def _loop_grpo(rewards, mask, G, scale, eps):
    out = torch.zeros_like(mask)
    r = rewards.tolist()
    for g0 in range(0, len(r), G):
        grp = r[g0:g0 + G]
        mean = sum(grp) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
        for i in range(G):
            a = r[g0 + i] - mean
            if scale:
                a = a / (std + eps)
            for t in range(mask.shape[1]):
                if mask[g0 + i, t] > 0:
                    out[g0 + i, t] = a
    return out


def _loop_rloo(rewards, mask, G):
    out = torch.zeros_like(mask)
    r = rewards.tolist()
    for g0 in range(0, len(r), G):
        for i in range(G):
            others = [r[g0 + j] for j in range(G) if j != i]
            a = r[g0 + i] - sum(others) / len(others)
            for t in range(mask.shape[1]):
                if mask[g0 + i, t] > 0:
                    out[g0 + i, t] = a
    return out


def _loop_reinforce_pp(rewards, mask, kl, beta, eps):
    N, T = mask.shape
    returns = torch.zeros(N, T, dtype=torch.float64)
    values = []
    for i in range(N):
        pos = [t for t in range(T) if mask[i, t] > 0]
        running = 0.0
        for t in reversed(pos):
            running += -beta * float(kl[i, t]) + (float(rewards[i]) if t == pos[-1] else 0.0)
            returns[i, t] = running
        values += [float(returns[i, t]) for t in pos]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    out = torch.zeros(N, T)
    for i in range(N):
        for t in range(T):
            if mask[i, t] > 0:
                out[i, t] = (returns[i, t] - mean) / (std + eps)
    return out


def _random_case(seed, n_groups, G, T=7):
    g = torch.Generator().manual_seed(seed)
    N = n_groups * G
    rewards = torch.randn(N, generator=g)
    starts = torch.randint(0, 3, (N,), generator=g).tolist()
    lengths = [int(torch.randint(1, T - s + 1, (1,), generator=g)) for s in starts]
    mask = _mask(lengths, T, starts)
    kl = torch.randn(N, T, generator=g).abs()
    return rewards, mask, kl


@pytest.mark.parametrize("G", [2, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_matches_loop(G, seed):
    rewards, mask, kl = _random_case(seed, n_groups=3, G=G)
    inp = AdvantageInputs(rewards, mask, G)
    for scale in (True, False):
        got = grpo_advantages(inp, GrpoConfig(group_size=G, scale_by_std=scale))
        assert torch.allclose(got, _loop_grpo(rewards, mask, G, scale, 1e-6), atol=1e-6)
    got = rloo_advantages(inp, RlooConfig(group_size=G))
    assert torch.allclose(got, _loop_rloo(rewards, mask, G), atol=1e-6)
    for beta in (0.0, 0.3):
        cfg = ReinforcePPConfig(group_size=G, kl_beta=beta)
        got = reinforce_pp_advantages(AdvantageInputs(rewards, mask, G, kl=kl), cfg)
        assert torch.allclose(got, _loop_reinforce_pp(rewards, mask, kl, beta, cfg.eps), atol=1e-6)


# ---------------------------------------------------------------- properties

@pytest.mark.parametrize("G", [2, 4, 8])
def test_grpo_sums_to_zero_per_group(G):
    rewards, _, _ = _random_case(3, n_groups=4, G=G)
    ones = torch.ones(len(rewards), 1)
    for scale in (True, False):
        adv = grpo_advantages(AdvantageInputs(rewards, ones, G), GrpoConfig(group_size=G, scale_by_std=scale))
        assert torch.allclose(adv[:, 0].view(-1, G).sum(1), torch.zeros(4), atol=1e-5)
    # RLOO's advantages are G/(G-1) times GRPO's unscaled ones, so they sum to 0 as well
    adv = rloo_advantages(AdvantageInputs(rewards, ones, G), RlooConfig(group_size=G))
    assert torch.allclose(adv[:, 0].view(-1, G).sum(1), torch.zeros(4), atol=1e-5)


def test_constant_reward_groups_give_zero():
    """A group whose rewards are all equal carries no signal: 0 (not NaN: std 0 + eps)."""
    rewards = torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0, 0.0, 1.0, 0.0])
    mask = torch.ones(8, 3)
    grpo = grpo_advantages(AdvantageInputs(rewards, mask, 4), GrpoConfig(group_size=4))
    rloo = rloo_advantages(AdvantageInputs(rewards, mask, 4), RlooConfig(group_size=4))
    for adv in (grpo, rloo):
        assert torch.isfinite(adv).all()
        assert torch.equal(adv[:4], torch.zeros(4, 3))
        assert adv[4:].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_zero_off_the_mask(name):
    rewards, mask, kl = _random_case(5, n_groups=2, G=4)
    cfg = {"grpo": GrpoConfig, "rloo": RlooConfig, "reinforce_pp": ReinforcePPConfig}[name](group_size=4)
    adv = get_advantage(name)(AdvantageInputs(rewards, mask, 4, kl=kl), cfg)
    assert adv.shape == mask.shape
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert adv[mask > 0].abs().sum() > 0


@pytest.mark.parametrize("fn,cfg", [(grpo_advantages, GrpoConfig(group_size=4)),
                                    (rloo_advantages, RlooConfig(group_size=4))])
def test_group_size_must_divide(fn, cfg):
    with pytest.raises(ValueError, match="groups of 4"):
        fn(AdvantageInputs(torch.randn(6), torch.ones(6, 2), 4), cfg)


def test_registry():
    assert set(ADVANTAGES) == {"grpo", "rloo", "reinforce_pp"}
    assert get_advantage("grpo") is grpo_advantages
    assert get_advantage("rloo") is rloo_advantages
    assert get_advantage("reinforce_pp") is reinforce_pp_advantages
    with pytest.raises(KeyError) as err:
        get_advantage("nope")
    msg = str(err.value)
    assert "nope" in msg and all(k in msg for k in ("grpo", "rloo", "reinforce_pp"))


# ---------------------------------------------------------------- KL estimators

_P = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
_Q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)


@pytest.mark.parametrize("p,q", [(_P, _Q), (_Q, _P), (_P, _P.flip(0))])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased(p, q, estimator):
    """Tokens sampled from p: E_p[k(log p, log q)] = sum_x p(x) k(x) must be KL(p || q)
    = sum_x p log(p / q), exactly (k3: sum p (q/p - 1 - log(q/p)) = 1 - 1 + KL)."""
    exact = float((p * (p.log() - q.log())).sum())
    est = kl_estimate(p.log(), q.log(), estimator)
    assert float((p * est).sum()) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_kl_estimators_elementwise():
    logp = torch.linspace(-6, 0, 25).view(5, 5)
    ref = torch.linspace(-0.1, -5, 25).view(5, 5).flip(1)
    k1 = kl_estimate(logp, ref, "k1")
    assert torch.allclose(k1, logp - ref)
    assert (k1 < 0).any()  # k1 can be negative per token
    k3 = kl_estimate(logp, ref, "k3")
    assert (k3 >= 0).all()
    d = ref - logp
    assert torch.allclose(k3, torch.exp(d) - d - 1, atol=1e-5)
    assert torch.equal(kl_estimate(logp, logp, "k3"), torch.zeros_like(logp))
    assert k3.shape == logp.shape


def test_kl_unknown_estimator():
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k2")
