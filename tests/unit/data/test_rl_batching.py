"""The RL micro-batch layout (BATCHERS["rl"]): per-response-token columns land on the
collated label positions (label t predicts token t+1)."""

import pytest
import torch

from tunefleet.algorithms.rl import policy_loss
from tunefleet.config.rl import GrpoConfig
from tunefleet.data.batching import BATCHERS, token_columns
from tunefleet.data.tokenize import collate

PAD = 0


def _row(prompt_len, resp_len, base, ref=True):
    """Prompt of `prompt_len` tokens + `resp_len` sampled tokens; distinct, recognisable
    per-token values: advantages base + 0.1 * k, behaviour logps -(base + k), ref -(base + k) - 0.5."""
    ids = [100 + base + k for k in range(prompt_len + resp_len)]
    row = {"input_ids": ids, "loss_mask": [0] * prompt_len + [1] * resp_len,
           "advantages": [base + 0.1 * k for k in range(resp_len)],
           "behaviour_logps": [-(base + k) for k in range(resp_len)]}
    if ref:
        row["ref_logps"] = [-(base + k) - 0.5 for k in range(resp_len)]
    return row


LAYOUT = [(3, 2), (2, 4), (4, 1), (1, 3)]  # (P, R): lengths 5, 6, 5, 4 -> width 6


def _rows(ref=True):
    return [_row(p, r, 10 * (i + 1), ref) for i, (p, r) in enumerate(LAYOUT)]


def test_values_land_on_the_label_positions():
    """Row with prompt P, response R: response token j sits at input position P + j and is
    predicted by label position P + j - 1, so the values go to P - 1 .. P + R - 2, zeros elsewhere
    (including the right padding). E.g. row 0 (P 3, R 2, width 6): positions 2, 3."""
    rows = _rows()
    batch = BATCHERS["rl"].collate(rows, PAD)
    labels = batch["main"]["labels"]
    assert labels.shape == (4, 6) and batch["aux"] == {}
    assert set(batch["extras"]) == {"advantages", "behaviour_logps", "ref_logps"}
    for i, ((P, R), row) in enumerate(zip(LAYOUT, rows)):
        targets = [t for t in range(6) if labels[i, t] != -100]
        assert targets == list(range(P - 1, P + R - 1))
        # the label at those positions is the response token itself
        assert labels[i, P - 1:P + R - 1].tolist() == row["input_ids"][P:P + R]
        for name in ("advantages", "behaviour_logps", "ref_logps"):
            col = batch["extras"][name]
            assert col.shape == labels.shape and col.dtype == torch.float32
            want = torch.zeros(6)
            want[P - 1:P + R - 1] = torch.tensor(row[name])
            assert torch.equal(col[i], want), (i, name)
    # padding: right-padded with pad_id, attention 0
    assert batch["main"]["input_ids"][3].tolist()[4:] == [PAD, PAD]
    assert batch["main"]["attention_mask"][3].tolist() == [1, 1, 1, 1, 0, 0]
    assert BATCHERS["rl"].sequences(rows) == 4


def test_by_hand_single_row():
    """P = 2, R = 3, input [a, b, x, y, z]: labels [-100, x, y, z, -100]; advantages
    [0, 1, 2, 3, 0]."""
    row = {"input_ids": [5, 6, 7, 8, 9], "loss_mask": [0, 0, 1, 1, 1],
           "advantages": [1.0, 2.0, 3.0], "behaviour_logps": [-0.1, -0.2, -0.3]}
    batch = BATCHERS["rl"].collate([row], PAD)
    assert batch["main"]["labels"].tolist() == [[-100, 7, 8, 9, -100]]
    assert batch["extras"]["advantages"].tolist() == [[0.0, 1.0, 2.0, 3.0, 0.0]]
    assert torch.allclose(batch["extras"]["behaviour_logps"], torch.tensor([[0.0, -0.1, -0.2, -0.3, 0.0]]))


def test_ref_logps_is_optional():
    batch = BATCHERS["rl"].collate(_rows(ref=False), PAD)
    assert set(batch["extras"]) == {"advantages", "behaviour_logps"}


def test_length_mismatch_raises():
    rows = _rows()
    rows[2]["advantages"] = rows[2]["advantages"] + [9.0]  # 2 values for 1 response token
    with pytest.raises(ValueError, match="advantages"):
        BATCHERS["rl"].collate(rows, PAD)
    rows = _rows()
    rows[0]["behaviour_logps"] = rows[0]["behaviour_logps"][:-1]
    with pytest.raises(ValueError, match="behaviour_logps"):
        BATCHERS["rl"].collate(rows, PAD)


def test_per_row_length_mismatch_raises_even_if_totals_agree():
    rows = _rows()
    rows[0]["advantages"] = rows[0]["advantages"] + [9.0]  # 3 values for 2 tokens
    rows[1]["advantages"] = rows[1]["advantages"][:-1]  # 3 values for 4 tokens
    with pytest.raises(ValueError, match="row 0"):
        BATCHERS["rl"].collate(rows, PAD)


def test_a_column_missing_from_some_rows_raises():
    rows = _rows()
    del rows[1]["advantages"]
    with pytest.raises(ValueError, match="some rows only"):
        BATCHERS["rl"].collate(rows, PAD)


def test_token_columns_directly():
    rows = _rows()
    labels = collate(rows, PAD)["labels"]
    cols = token_columns(rows, labels, names=("advantages",))
    assert set(cols) == {"advantages"}
    assert cols["advantages"][1, 1:5].tolist() == pytest.approx([20.0, 20.1, 20.2, 20.3])
    assert token_columns(rows, labels, names=("missing",)) == {}


def test_batch_feeds_the_policy_loss():
    """End to end: mask = labels != -100 and logps == behaviour_logps (ratio 1) gives the
    policy-gradient value -sum(A) / num_tokens over exactly the response tokens."""
    rows = _rows()
    batch = BATCHERS["rl"].collate(rows, PAD)
    mask = (batch["main"]["labels"] != -100).float()
    n = sum(len(r["advantages"]) for r in rows)
    assert int(mask.sum()) == n
    from tunefleet.algorithms import LossInputs

    ex = batch["extras"]
    out = policy_loss(LossInputs(ex["behaviour_logps"], mask, float(n), len(rows), ex), GrpoConfig(kl_beta=0.0))
    want = -sum(sum(r["advantages"]) for r in rows) / n
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
