"""The clipped policy loss of online RL (rl.policy_loss): the plain policy gradient at ratio 1,
hand-computed clipping, token vs sequence aggregation, the KL term, micro-batch invariance."""

import math

import pytest
import torch

from tunefleet.algorithms import LossInputs, get_loss
from tunefleet.algorithms.rl import kl_estimate, policy_loss
from tunefleet.config.rl import GrpoConfig, ReinforcePPConfig, RlooConfig

NO_CLIP = dict(clip_low=0.999999, clip_high=1e9)


def _inputs(logps, mask, adv, old, ref=None, num_tokens=None, num_sequences=None, entropy=None):
    extras = {"advantages": adv, "behaviour_logps": old}
    if ref is not None:
        extras["ref_logps"] = ref
    if entropy is not None:
        extras["entropy"] = entropy
    n = float(mask.sum()) if num_tokens is None else num_tokens
    s = mask.shape[0] if num_sequences is None else num_sequences
    return LossInputs(logps, mask, n, s, extras)


def _random_batch(seed, B=6, T=8, spread=0.3):
    """Rows with a prompt prefix and responses of different lengths; logps != behaviour."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T)
    for i in range(B):
        start = int(torch.randint(0, 3, (1,), generator=g))
        length = int(torch.randint(1, T - start + 1, (1,), generator=g))
        mask[i, start:start + length] = 1.0
    old = -torch.rand(B, T, generator=g) * 3 * mask
    logps = (old + spread * torch.randn(B, T, generator=g)) * mask
    adv = torch.randn(B, 1, generator=g) * mask
    ref = (old + 0.2 * torch.randn(B, T, generator=g)) * mask
    return logps, mask, adv, old, ref


def test_registered_for_rl_types():
    for name in ("grpo", "rloo", "reinforce_pp"):
        assert get_loss(name) is policy_loss


@pytest.mark.parametrize("cfg", [GrpoConfig(kl_beta=0.0, **NO_CLIP), RlooConfig(**NO_CLIP),
                                 GrpoConfig(kl_beta=0.0)])
def test_ratio_one_is_plain_policy_gradient(cfg):
    """logps == behaviour_logps -> ratio 1 -> loss -sum(A * mask) / n and gradient
    -A * mask / n, the same as d/dlogps of -(A * logps * mask).sum() / n. (At ratio 1 the default
    clip range is inactive too.)"""
    _, mask, adv, old, _ = _random_batch(0)
    logps = old.clone().requires_grad_(True)
    out = policy_loss(_inputs(logps, mask, adv, old), cfg)
    n = float(mask.sum())
    assert out.loss.item() == pytest.approx(-(adv * mask).sum().item() / n, rel=1e-6)
    (grad,) = torch.autograd.grad(out.loss, logps)

    plain_logps = old.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(-(adv * plain_logps * mask).sum() / n, plain_logps)
    assert torch.allclose(grad, plain, atol=1e-7)
    assert torch.allclose(grad, -adv * mask / n, atol=1e-7)
    assert out.metrics["clip_frac"].item() == 0.0
    assert out.metrics["ratio"].item() == pytest.approx(1.0, rel=1e-6)
    assert "kl" not in out.metrics


def test_clipping_by_hand():
    """clip range [0.8, 1.28]; behaviour logps all -1; one row, 5 positions, the last masked.

    t0: A = +1, ratio 1.5 > 1.28: max(-1.5, -1.28) = -1.28, clipped -> gradient 0
    t1: A = -1, ratio 0.5 < 0.8:  max(0.5, 0.8) = 0.8,       clipped -> gradient 0
    t2: A = +2, ratio 1.1 inside: -2.2,  d/dlogp (-A * ratio) = -2.2
    t3: A = -1, ratio 1.2 inside: +1.2,  d/dlogp = +1.2
    t4: masked (ratio 3, A = 5): nothing.
    n = 4: loss = (-1.28 + 0.8 - 2.2 + 1.2) / 4 = -0.37; gradient [0, 0, -0.55, 0.3, 0];
    clip_frac 2/4; ratio metric (1.5 + 0.5 + 1.1 + 1.2) / 4 = 1.075;
    neg_logp = -sum(logps) / 4 = -sum(log ratio - 1) / 4 (no "entropy": no extras["entropy"] given).
    """
    ratios = torch.tensor([[1.5, 0.5, 1.1, 1.2, 3.0]], dtype=torch.float64)
    old = torch.full_like(ratios, -1.0)
    logps = (old + ratios.log()).requires_grad_(True)
    mask = torch.tensor([[1.0, 1, 1, 1, 0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1, 2, -1, 5]], dtype=torch.float64)
    cfg = GrpoConfig(clip_low=0.2, clip_high=0.28)
    out = policy_loss(_inputs(logps, mask, adv, old), cfg)
    assert out.loss.item() == pytest.approx(-0.37, rel=1e-9)
    (grad,) = torch.autograd.grad(out.loss, logps)
    assert torch.allclose(grad, torch.tensor([[0.0, 0.0, -0.55, 0.3, 0.0]], dtype=torch.float64), atol=1e-12)
    assert out.metrics["clip_frac"].item() == pytest.approx(0.5)
    assert out.metrics["ratio"].item() == pytest.approx(1.075, rel=1e-9)
    want_neg_logp = -sum(math.log(r) - 1 for r in (1.5, 0.5, 1.1, 1.2)) / 4
    assert out.metrics["neg_logp"].item() == pytest.approx(want_neg_logp, rel=1e-9)
    assert "entropy" not in out.metrics


def test_entropy_metric_is_the_distribution_entropy():
    """extras["entropy"] [B, T] is H = -sum_v p_v log p_v per token (the model computes it);
    the metric is its token mean over the step, summed over micro-batches like the others.
    Two rows, mask [[1, 1, 0], [1, 0, 0]], H [[ln 2, ln 3, 9], [0.5, 7, 7]], num_tokens 3:
    entropy = (0.693147 + 1.098612 + 0.5) / 3 = 0.763920. The sampled tokens' logps are all
    -2, so neg_logp = 2: a different number, as it should be (one sampled token says little
    about the whole distribution)."""
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    logps = torch.full((2, 3), -2.0) * mask
    ent = torch.tensor([[math.log(2), math.log(3), 9.0], [0.5, 7.0, 7.0]])
    out = policy_loss(_inputs(logps, mask, torch.zeros(2, 3), logps.clone(), entropy=ent), GrpoConfig())
    assert out.metrics["entropy"].item() == pytest.approx((math.log(2) + math.log(3) + 0.5) / 3, rel=1e-6)
    assert out.metrics["entropy"].item() == pytest.approx(0.763920, abs=1e-6)
    assert out.metrics["neg_logp"].item() == pytest.approx(2.0, rel=1e-6)


def test_out_of_range_ratio_on_the_pessimistic_side_keeps_its_gradient():
    """PPO's max() only clips the side that would over-reward the change: A = +1 with ratio 0.5
    (< 0.8) gives max(-0.5, -0.8) = -0.5, unclipped, gradient -A * ratio = -0.5; likewise
    A = -1 with ratio 1.5 (> 1.28): max(1.5, 1.28) = 1.5, gradient +1.5. n = 2."""
    ratios = torch.tensor([[0.5, 1.5]], dtype=torch.float64)
    old = torch.zeros_like(ratios)
    logps = ratios.log().requires_grad_(True)
    out = policy_loss(_inputs(logps, torch.ones_like(ratios), torch.tensor([[1.0, -1.0]], dtype=torch.float64), old),
                      GrpoConfig(clip_low=0.2, clip_high=0.28))
    assert out.loss.item() == pytest.approx((-0.5 + 1.5) / 2, rel=1e-9)
    (grad,) = torch.autograd.grad(out.loss, logps)
    assert torch.allclose(grad, torch.tensor([[-0.25, 0.75]], dtype=torch.float64), atol=1e-12)


def test_token_vs_sequence_aggregation_by_hand():
    """Ratio 1, so per-token loss = -A. Row 0: one token, A = 3; row 1: three tokens,
    A = [1, 1, 4] (the trailing position is padding).
    token:    -(3 + 1 + 1 + 4) / 4 tokens = -2.25
    sequence: row means -3 and -2, summed / 2 sequences = -2.5
    Gradients: token -A / 4 everywhere; sequence -A / (len_i * 2): row 0 -1.5, row 1 [-1/6, -1/6, -4/6].
    """
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0]])
    adv = torch.tensor([[3.0, 0, 0, 0], [1, 1, 4, 0]])
    old = torch.tensor([[-0.5, 0, 0, 0], [-1.0, -2.0, -0.1, 0]])
    want = {"token": (-2.25, -adv / 4),
            "sequence": (-2.5, -torch.tensor([[1.5, 0, 0, 0], [1 / 6, 1 / 6, 4 / 6, 0]]))}
    for how, (loss, grad) in want.items():
        logps = old.clone().requires_grad_(True)
        out = policy_loss(_inputs(logps, mask, adv, old), GrpoConfig(aggregation=how))
        assert out.loss.item() == pytest.approx(loss, rel=1e-6)
        (g,) = torch.autograd.grad(out.loss, logps)
        assert torch.allclose(g, grad * mask, atol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_term_in_the_loss_for_grpo(estimator):
    """GRPO (KL_IN_REWARD False), kl_beta 0.1, ratio 1, A = 0 so only the KL term is left.
    logps [-1, -2], ref [-1.5, -1] -> log ratio [0.5, -1].
    k1: [0.5, -1], mean over 2 tokens -0.25 -> loss -0.025. Its gradient is the score-function
    gradient of the KL, beta * log ratio / 2 = [0.025, -0.05] (k1's own gradient, 0.05 per
    token, has expectation 0 and ignores the reference: it pulled nothing).
    k3: e^-0.5 - 1 + 0.5 = 0.106531, e^1 - 1 - 1 = 0.718282 -> mean 0.412406 -> loss 0.0412406;
    gradient beta * (1 - e^(ref - logp)) / 2 = 0.05 * [1 - e^-0.5, 1 - e] = [0.019673, -0.085914].
    """
    old = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    cfg = GrpoConfig(kl_beta=0.1, kl_estimator=estimator)
    assert not cfg.KL_IN_REWARD
    logps = old.clone().requires_grad_(True)
    out = policy_loss(_inputs(logps, mask, torch.zeros(1, 2), old, ref=ref), cfg)
    kl = {"k1": -0.25, "k3": (math.exp(-0.5) - 0.5 + math.e - 2) / 2}[estimator]
    assert out.metrics["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.1 * kl, rel=1e-5)
    (g,) = torch.autograd.grad(out.loss, logps)
    want = {"k1": [[0.025, -0.05]], "k3": [[0.05 * (1 - math.exp(-0.5)), 0.05 * (1 - math.e)]]}[estimator]
    assert torch.allclose(g, torch.tensor(want), atol=1e-6)


def test_kl_term_adds_to_the_policy_loss_for_grpo():
    """With nonzero advantages and ratio != 1: loss(with ref) - loss(without ref)
    = beta * masked mean of the estimator."""
    logps, mask, adv, old, ref = _random_batch(1)
    cfg = GrpoConfig(kl_beta=0.05, kl_estimator="k3")
    with_kl = policy_loss(_inputs(logps, mask, adv, old, ref=ref), cfg)
    without = policy_loss(_inputs(logps, mask, adv, old), cfg)
    kl = (kl_estimate(logps, ref, "k3") * mask).sum() / mask.sum()
    assert with_kl.metrics["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert (with_kl.loss - without.loss).item() == pytest.approx(0.05 * kl.item(), rel=1e-4)


def test_kl_only_a_metric_for_reinforce_pp():
    """REINFORCE++ folds the KL into the reward (KL_IN_REWARD): the loss ignores ref_logps
    (same value, same gradient) but still reports the KL."""
    logps, mask, adv, old, ref = _random_batch(2)
    cfg = ReinforcePPConfig(kl_beta=0.5)
    assert cfg.KL_IN_REWARD
    a = logps.clone().requires_grad_(True)
    b = logps.clone().requires_grad_(True)
    with_ref = policy_loss(_inputs(a, mask, adv, old, ref=ref), cfg)
    without = policy_loss(_inputs(b, mask, adv, old), cfg)
    assert torch.equal(with_ref.loss, without.loss)
    (ga,), (gb,) = torch.autograd.grad(with_ref.loss, a), torch.autograd.grad(without.loss, b)
    assert torch.equal(ga, gb)
    kl = (kl_estimate(logps, ref, "k1") * mask).sum() / mask.sum()
    assert with_ref.metrics["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert "kl" not in without.metrics


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_micro_batch_invariance(aggregation):
    """6 rows as one batch or as 3 micro-batches of 2, each normalised by the *global*
    num_tokens / num_sequences: losses, gradients and metrics sum to the full batch's."""
    logps, mask, adv, old, ref = _random_batch(3, spread=0.4)
    cfg = GrpoConfig(aggregation=aggregation, kl_beta=0.1, clip_low=0.1, clip_high=0.1)
    n, s = float(mask.sum()), 6

    full_logps = logps.clone().requires_grad_(True)
    ent = torch.rand(mask.shape, generator=torch.Generator().manual_seed(4)) * 3
    full = policy_loss(_inputs(full_logps, mask, adv, old, ref, n, s, ent), cfg)
    full.loss.backward()
    assert full.metrics["clip_frac"].item() > 0  # the clipped branch is exercised
    assert {"entropy", "neg_logp"} <= set(full.metrics)

    split_logps = logps.clone().requires_grad_(True)
    total, metrics = 0.0, {}
    for i in range(0, 6, 2):
        rows = slice(i, i + 2)
        out = policy_loss(_inputs(split_logps[rows], mask[rows], adv[rows], old[rows], ref[rows], n, s,
                                  ent[rows]), cfg)
        out.loss.backward()
        total = total + out.loss.detach()
        for k, v in out.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + v
    assert torch.allclose(total, full.loss.detach(), atol=1e-6)
    assert torch.allclose(split_logps.grad, full_logps.grad, atol=1e-7)
    assert set(metrics) == set(full.metrics)
    for k in metrics:
        assert torch.allclose(metrics[k], full.metrics[k], atol=1e-6), k
