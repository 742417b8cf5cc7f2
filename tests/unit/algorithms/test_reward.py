"""Bradley-Terry reward-model loss against values worked out by hand, plus invariance."""

import math

import pytest
import torch

from tunefleet.algorithms import LossInputs, get_loss
from tunefleet.config.preference import RewardModelConfig


def sig(x):
    return 1 / (1 + math.exp(-x))


def _inputs(values, n_pairs):
    """Scalar-head outputs [2b] (chosen rows first); logps/mask are unused placeholders."""
    rows = values.shape[0]
    return LossInputs(torch.zeros(rows, 1), torch.ones(rows, 1), float(rows), n_pairs, values=values)


def test_reward_model_with_centering_by_hand():
    """chosen [2, 0], rejected [1, 1] -> margins 1, -1.

    BT: (-log sigmoid(1) - log sigmoid(-1)) / 2 = (0.313262 + 1.313262) / 2 = 0.813262.
    Centering, coef 0.5: mean((2+1)^2, (0+1)^2) = (9 + 1) / 2 = 5 -> + 2.5 -> 3.313262.
    Metrics: rewards/chosen = (2 + 0)/2 = 1, rewards/rejected = 1, margin 0, accuracy 1/2.
    """
    values = torch.tensor([2.0, 0.0, 1.0, 1.0], requires_grad=True)
    bt = (-math.log(sig(1)) - math.log(sig(-1))) / 2
    plain = get_loss("reward_model")(_inputs(values, 2), RewardModelConfig())
    assert plain.loss.item() == pytest.approx(bt, rel=1e-6)
    out = get_loss("reward_model")(_inputs(values, 2), RewardModelConfig(center_rewards_coef=0.5))
    assert out.loss.item() == pytest.approx(bt + 2.5, rel=1e-6)
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m == pytest.approx({"rewards/chosen": 1.0, "rewards/rejected": 1.0, "rewards/margin": 0.0,
                               "accuracy": 0.5})


def test_reward_model_gradient_by_hand():
    """One pair, r_c = r_r = 0, num_sequences = 2: dL/dr_c = -sigmoid(0) / 2 = -0.25, dL/dr_r = +0.25."""
    values = torch.zeros(2, requires_grad=True)
    out = get_loss("reward_model")(_inputs(values, 2), RewardModelConfig())
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.log(2) / 2)
    assert values.grad.tolist() == pytest.approx([-0.25, 0.25])


def test_accuracy_counts_ties_as_wrong():
    """Margins +0.5, 0, -2 -> only the first pair is ranked right: accuracy 1/3."""
    values = torch.tensor([1.5, 3.0, -1.0, 1.0, 3.0, 1.0])
    out = get_loss("reward_model")(_inputs(values, 3), RewardModelConfig())
    assert out.metrics["accuracy"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("coef", [0.0, 0.1])
def test_micro_batches_sum_to_the_whole_batch(coef):
    """4 pairs at once vs 4 micro-batches of 1 pair (num_sequences = 4): same loss, gradients
    w.r.t. values and metrics."""
    cfg = RewardModelConfig(center_rewards_coef=coef)
    base = torch.randn(8, generator=torch.Generator().manual_seed(0))
    whole_v = base.clone().requires_grad_(True)
    whole = get_loss("reward_model")(_inputs(whole_v, 4), cfg)
    whole.loss.backward()
    parts_v = base.clone().requires_grad_(True)
    outs = [get_loss("reward_model")(_inputs(parts_v[[i, 4 + i]], 4), cfg) for i in range(4)]
    sum(o.loss for o in outs).backward()
    assert torch.allclose(whole.loss, sum(o.loss for o in outs), atol=1e-6)
    assert torch.allclose(whole_v.grad, parts_v.grad, atol=1e-6)
    for key, value in whole.metrics.items():
        assert torch.allclose(value, sum(o.metrics[key] for o in outs), atol=1e-6), key


def test_needs_a_value_head():
    with pytest.raises(ValueError, match="value head"):
        get_loss("reward_model")(LossInputs(torch.zeros(2, 1), torch.ones(2, 1), 2.0, 1), RewardModelConfig())
