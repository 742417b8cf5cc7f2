"""SFT loss against values worked out by hand."""

import math

import pytest
import torch

from tunefleet.algorithms import LOSSES, LossInputs, get_loss
from tunefleet.config import SftConfig


def test_sft_loss_by_hand():
    """Two sequences; counted tokens have probabilities 1/2, 1/4 (row 0) and 1/8 (row 1).

    NLL = (ln 2 + ln 4 + ln 8) / 3 = 6 ln 2 / 3 = 2 ln 2 ~= 1.3863.
    """
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.125, 0.3, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = get_loss("sft")(LossInputs(logps, mask, num_tokens=3, num_sequences=2), SftConfig())
    assert math.isclose(out.loss.item(), 2 * math.log(2), rel_tol=1e-6)


def test_sft_loss_splits_into_micro_batches_that_sum_to_the_whole():
    """With global normalisation, micro-batch losses add up to the full-batch loss."""
    logps = -torch.rand(4, 5)
    mask = (torch.rand(4, 5) > 0.3).float()
    n = float(mask.sum())
    whole = get_loss("sft")(LossInputs(logps, mask, n, 4), SftConfig()).loss
    parts = sum(get_loss("sft")(LossInputs(logps[i:i + 1], mask[i:i + 1], n, 4), SftConfig()).loss for i in range(4))
    assert torch.allclose(whole, parts)


def test_per_token_weights():
    """Weights [2, 0] on tokens with logp ln(1/2), ln(1/4): 2 ln 2 / 2 = ln 2."""
    logps = torch.log(torch.tensor([[0.5, 0.25]]))
    out = get_loss("sft")(LossInputs(logps, torch.ones(1, 2), 2, 1, {"weights": torch.tensor([[2.0, 0.0]])}),
                          SftConfig())
    assert math.isclose(out.loss.item(), math.log(2), rel_tol=1e-6)


def test_registry_is_explicit_and_reports_unknown_names():
    assert "sft" in LOSSES
    with pytest.raises(KeyError, match="known"):
        get_loss("nope")
