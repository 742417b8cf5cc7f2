"""TokenLogpModel at a sampling temperature, and the real entropy it reports for RL: the
trainer's log-probs must be those of the distribution the rollout engine sampled from
(log_softmax(logits / T)), and the reference the KL compares against uses the same T."""

import math
import os

import pytest
import torch
from torch import nn

from tunefleet.algorithms import get_loss
from tunefleet.config import load_config
from tunefleet.config.rl import GrpoConfig
from tunefleet.data.batching import BATCHERS
from tunefleet.models.policy import TokenLogpModel, build_policy
from tunefleet.models.registry import resolve_model
from tunefleet.train.step import StepContext, count_targets, train_step


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    os.environ.setdefault("TUNEFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    return str(resolve_model("tiny-llama"))


class _Hidden:
    def __init__(self, h):
        self.last_hidden_state = h


class _Decoder(nn.Module):
    """hidden[t] = table[input_ids[t]] (the logits we want, since the head is the identity)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(table)

    def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=False):
        return _Hidden(self.emb(input_ids))


class _HandLM(nn.Module):
    """A fake causal LM whose logits at a position are fixed by that position's token."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.decoder, self.head = _Decoder(table), nn.Linear(table.shape[1], table.shape[1], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(table.shape[1]))

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.head


def test_temperature_and_entropy_by_hand():
    """Vocab 3, temperature 2. Token 0's logits z = [0, 2 ln 2, 2 ln 3] -> z / 2 = [0, ln 2, ln 3]
    -> p = [1/6, 1/3, 1/2]; token 1's logits [0, 0, 0] -> uniform.
    Sequence [0, 1, 0], labels [2, 1, -100]:
      logp(2 | pos 0) = ln(1/2) = -0.693147;  logp(1 | pos 1) = ln(1/3) = -1.098612;  pos 2: 0.
      H(pos 0) = 1/6 ln 6 + 1/3 ln 3 + 1/2 ln 2 = 0.298627 + 0.366204 + 0.346574 = 1.011404;
      H(pos 1) = ln 3 = 1.098612;  pos 2: 0 (not a target).
    At temperature 1 the same token 0 has p = softmax([0, 1.386294, 2.197225]) = [1/14, 4/14, 9/14]:
      logp(2) = ln(9/14) = -0.441833.
    """
    table = torch.tensor([[0.0, 2 * math.log(2), 2 * math.log(3)], [0.0, 0.0, 0.0]], dtype=torch.float64)
    model = TokenLogpModel(_HandLM(table).double(), temperature=2.0)
    ids, labels = torch.tensor([[0, 1, 0]]), torch.tensor([[2, 1, -100]])
    logps, ent = model(input_ids=ids, labels=labels, entropy=True)
    assert torch.allclose(logps, torch.tensor([[-0.693147, -1.098612, 0.0]]), atol=1e-6)
    assert torch.allclose(ent, torch.tensor([[1.011404, 1.098612, 0.0]]), atol=1e-6)
    assert not ent.requires_grad  # a metric: no graph kept for it
    plain = TokenLogpModel(_HandLM(table).double())(input_ids=ids, labels=labels)  # T = 1, no entropy
    assert plain[0, 0].item() == pytest.approx(math.log(9 / 14), abs=1e-6)


def test_token_entropy_chunks_agree():
    """Chunked entropy equals the one-shot -sum p log p, whatever the chunk size."""
    from tunefleet.models.policy import token_entropy

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(7, 11, generator=g)
    lse = torch.logsumexp(logits, -1)
    p = torch.softmax(logits, -1)
    want = -(p * torch.log_softmax(logits, -1)).sum(-1)
    for chunk in (1, 3, 7, 100):
        assert torch.allclose(token_entropy(logits, lse, chunk=chunk), want, atol=1e-6)


def _rows(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        plen, rlen = 4 + i, 3 + i
        rows.append({"input_ids": torch.randint(0, 256, (plen + rlen,), generator=g).tolist(),
                     "loss_mask": [0] * plen + [1] * rlen})
    return rows


def test_tiny_model_logps_at_temperature_are_log_softmax_of_scaled_logits(tiny):
    """On the real tiny Llama: TokenLogpModel(T = 0.7) == log_softmax(lm(ids).logits / 0.7)
    gathered at the labels (0 off the targets), and differs from T = 1."""
    policy = build_policy(tiny, "float32", None, torch.device("cpu"), 1, temperature=0.7)
    assert policy.module.temperature == 0.7
    batch = BATCHERS["single"].collate(_rows(), 0)["main"]
    with torch.no_grad():
        logps = policy.module(input_ids=batch["input_ids"], labels=batch["labels"])
        logits = policy.module.lm(input_ids=batch["input_ids"]).logits.float()
    sel = batch["labels"] != -100
    labels = batch["labels"].clamp(min=0).unsqueeze(-1)
    want = torch.log_softmax(logits / 0.7, -1).gather(-1, labels).squeeze(-1)
    at_one = torch.log_softmax(logits, -1).gather(-1, labels).squeeze(-1)
    assert torch.allclose(logps[sel], want[sel], atol=1e-5)
    assert (logps[~sel] == 0).all()
    assert (logps[sel] - at_one[sel]).abs().max() > 1e-2  # the temperature really is applied


def test_rl_setup_applies_the_sampling_temperature_to_policy_and_reference(tiny, tmp_path):
    """loop._setup for GRPO at temperature 0.7 with a KL term: the policy scores at T = 0.7,
    and so does the live reference, so that at step 0 policy == reference exactly (KL 0)."""
    from tunefleet.train.loop import _setup

    text = ("model: {name: tiny-llama}\ndata: {task: arith}\n"
            "algorithm: {type: grpo, temperature: 0.7, kl_beta: 0.04}\n"
            "trainer: {num_workers: 1, max_steps: 1, batch_size: 4, micro_batch_size: 4}\n")
    (tmp_path / "c.yaml").write_text(text)
    ctx = _setup(load_config(tmp_path / "c.yaml"), tiny, 0, 1)
    assert ctx.policy.module.temperature == 0.7
    batch = BATCHERS["single"].collate(_rows(), 0)["main"]
    with torch.no_grad():
        logps = ctx.policy.module(input_ids=batch["input_ids"], labels=batch["labels"])
        ref = ctx.reference(batch)
    assert torch.equal(logps, ref)


def test_rl_train_step_logs_the_real_entropy(tiny):
    """A GRPO step through train_step: the `entropy` metric is the token mean of
    -sum_v p_v log p_v (p at the sampling temperature) over the response tokens, not the
    sampled tokens' negative log-likelihood (which is logged as `neg_logp`)."""
    algo = GrpoConfig(temperature=0.7)
    torch.manual_seed(0)
    policy = build_policy(tiny, "float32", None, torch.device("cpu"), 1, temperature=0.7)
    rows = _rows()
    batch = BATCHERS["rl"].collate([{**r, "advantages": [0.5] * sum(r["loss_mask"]),
                                     "behaviour_logps": [-5.0] * sum(r["loss_mask"])} for r in rows], 0)
    main, n = batch["main"], count_targets(batch)
    with torch.no_grad():
        logits = policy.module.lm(input_ids=main["input_ids"]).logits.float() / 0.7
        logps = policy.module(input_ids=main["input_ids"], labels=main["labels"])
    sel = main["labels"] != -100
    lp = torch.log_softmax(logits, -1)[sel]
    want_entropy = float(-(lp.exp() * lp).sum(-1).sum() / n)
    want_neg_logp = float(-logps[sel].sum() / n)
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctx = StepContext(policy, opt, sched, get_loss("grpo"), algo, torch.device("cpu"), 1, 0.0, False)
    metrics = train_step(ctx, [batch], n, len(rows))
    assert metrics["entropy"] == pytest.approx(want_entropy, rel=1e-5)
    assert metrics["neg_logp"] == pytest.approx(want_neg_logp, rel=1e-5)
    assert abs(metrics["entropy"] - metrics["neg_logp"]) > 1e-3  # different quantities
