"""Log-likelihood MC and perplexity arithmetic (lm-eval's conventions), with a fake LM whose
log-probs are known in closed form."""

import math

import pytest
import torch

from tunefleet.eval.mc import encode_pair, mc_verdict, score_windows
from tunefleet.eval.perplexity import count_words, rolling_windows, suite_metrics

V = 4
HIT = math.log(math.exp(10) / (math.exp(10) + V - 1))  # log p of the predicted token
MISS = math.log(1 / (math.exp(10) + V - 1))


class NextIdModel(torch.nn.Module):
    """logits[b, t] = 10 at token (ids[b, t] + 1) % V, else 0: p(next = id+1) = e^10/(e^10+3)."""

    class config:  # noqa: N801 - mimics an HF config
        max_position_embeddings = 16

    def forward(self, input_ids, attention_mask=None):
        logits = torch.nn.functional.one_hot((input_ids + 1) % V, V).float() * 10
        return type("Out", (), {"logits": logits})()


def test_score_windows_reads_the_continuation_positions_across_padding():
    """([0, 1], [2, 3]): input [0, 1, 2] predicts 2 after 1 and 3 after 2: 2*HIT.
    ([0], [2]): 0 predicts 1, not 2: MISS. ([3], [0, 1]): 3->0 and 0->1: 2*HIT. One padded batch."""
    got = score_windows(NextIdModel(), [([0, 1], [2, 3]), ([0], [2]), ([3], [0, 1])], batch_size=3)
    assert got == pytest.approx([2 * HIT, MISS, 2 * HIT], abs=1e-6)
    assert score_windows(NextIdModel(), [([0, 1], [2, 3]), ([0], [2])], batch_size=1) == pytest.approx(got[:2])


def test_mc_verdict_acc_and_length_normalised():
    """lls = [-3, -4]; choice lengths 2 and 6 chars: acc picks 0 (-3 > -4); acc_norm compares
    -3/2 = -1.5 with -4/6 = -0.667 and picks 1."""
    v = mc_verdict([-3.0, -4.0], ("ab", "abcdef"), gold=1)
    assert (v["pred"], v["pred_norm"], v["acc"], v["acc_norm"]) == (0, 1, 0.0, 1.0)
    assert mc_verdict([-1.0, -1.0], ("x", "x"), gold=0)["acc"] == 1.0  # a tie goes to the first choice


def test_rolling_windows_hand_worked():
    """tokens 1..5, max_length 2, prefix 0: targets [1,2], [3,4], [5], each after what precedes it."""
    assert rolling_windows([1, 2, 3, 4, 5], 0, 2) == [([0], [1, 2]), ([2], [3, 4]), ([3, 4], [5])]
    assert rolling_windows([7], 0, 8) == [([0], [7])] and rolling_windows([], 0, 8) == []


def test_rolling_windows_match_lm_eval():
    utils = pytest.importorskip("lm_eval.utils")
    for n in (1, 2, 5, 17, 40):
        for max_len in (1, 2, 3, 8, 64):
            tokens = list(range(10, 10 + n))
            theirs = [utils.make_disjoint_window(w)
                      for w in utils.get_rolling_token_windows(tokens, 0, max_len, context_len=1)]
            assert rolling_windows(tokens, 0, max_len) == theirs, (n, max_len)


def test_suite_metrics_hand_worked():
    """LL = -2 and -4 (sum -6); words 2 + 1 = 3, bytes 3 + 1 = 4, tokens 3 + 3 = 6:
    word ppl e^(6/3) = e^2, byte ppl e^(6/4), bits/byte 1.5/ln 2, token ppl e^1."""
    m = suite_metrics([-2.0, -4.0], ["a b", "c"], [3, 3])
    assert m["word_perplexity"] == pytest.approx(math.exp(2))
    assert m["byte_perplexity"] == pytest.approx(math.exp(1.5))
    assert m["bits_per_byte"] == pytest.approx(1.5 / math.log(2))
    assert m["token_perplexity"] == pytest.approx(math.e) and m["n"] == 2
    assert count_words("a  b\nc") == 3 and count_words("ü") == 1


class CharTokenizer:
    """One token per character, no special tokens: the split point is easy to see."""

    bos_token_id, eos_token_id = None, 0

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    tok = CharTokenizer()
    assert encode_pair(tok, "Q: ", " A") == ([ord("Q"), ord(":")], [ord(" "), ord(" "), ord("A")])
    assert encode_pair(tok, "Q", " A") == ([ord("Q")], [ord(" "), ord("A")])
    assert encode_pair(tok, "", "AB") == ([0], [ord("A"), ord("B")])  # empty context: the prefix token
