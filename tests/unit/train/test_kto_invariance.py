"""KTO through the real step (tiny model, in-process): the loss, the update and the metrics
do not depend on how the step's batch is split into micro-batches. The KL baseline z0 is
a statistic of the whole step (its mismatched pairs are formed over the global batch and
averaged over every micro-batch), and rewards/chosen and rewards/rejected average over the
step's rows of each side, even in micro-batches that have only one side."""

import pytest
import torch

from tunefleet.algorithms import get_loss
from tunefleet.config.preference import KtoConfig
from tunefleet.data.batching import BATCHERS
from tunefleet.models.policy import build_policy
from tunefleet.models.registry import resolve_model
from tunefleet.train.sources import plan_rows
from tunefleet.train.step import StepContext, run_model, train_step

LABELS = [1, 1, 0, 0, 0, 1, 1, 1]  # micro-batches of 2 hold [1, 1], [0, 0], [0, 1], [1, 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import os

    os.environ.setdefault("TUNEFLEET_HOME", str(tmp_path_factory.mktemp("home")))
    return str(resolve_model("tiny-llama"))


def kto_rows(seed=3):
    """8 unpaired rows, prompts of 3-6 tokens, completions of 2-5, labels LABELS."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, label in enumerate(LABELS):
        plen, rlen = 3 + i % 4, 2 + (i * 3) % 4
        ids = torch.randint(0, 256, (plen + rlen,), generator=g).tolist()
        rows.append({"input_ids": ids, "loss_mask": [0] * plen + [1] * rlen, "kto_label": float(label)})
    return rows


def scaled_reference(tiny, world=1):
    """A live reference that is not the policy: 1.1 x the frozen base model's log-probs, so
    every mismatched pair has log pi - log ref = -0.1 log pi > 0 (z0 > 0, not clamped) and
    the pairs differ from each other (z0 depends on which pairs a micro-batch holds)."""
    frozen = build_policy(tiny, "float32", None, torch.device("cpu"), world, trainable=False)
    frozen.module.eval()
    return lambda seqs: 1.1 * run_model(frozen.module, seqs, torch.device("cpu"), False)


KTO = KtoConfig(beta=0.5, undesirable_weight=1.5)


def kto_step(tiny, micro, rank=0, world=1, algo=KTO):
    """One SGD step on this rank's share of kto_rows(), split into micro-batches of `micro`."""
    torch.manual_seed(0)
    policy = build_policy(tiny, "float32", None, torch.device("cpu"), world)
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctx = StepContext(policy, opt, sched, get_loss(algo.type), algo, torch.device("cpu"), world, 0.0, False,
                      reference=scaled_reference(tiny, world))
    rows = kto_rows()
    plan = plan_rows(rows, list(range(len(rows))), rank, world, micro, BATCHERS["kto"], 0)
    metrics = train_step(ctx, plan.micro_batches, plan.num_tokens, plan.num_sequences)
    return metrics, policy


def test_kto_step_does_not_depend_on_micro_batching(tiny):
    """8 rows as 1 x 8, 2 x 4, 4 x 2 and 8 x 1: the same loss, kl (z0), rewards/chosen,
    rewards/rejected, gradient norm and updated weights. Before, z0 was each micro-batch's
    own estimate over its own mismatched pairs (and 1 x 8 paired a row with itself), and
    a micro-batch of one side averaged the other side's reward as 0."""
    runs = {m: kto_step(tiny, m) for m in (8, 4, 2, 1)}
    base, base_policy = runs[8]
    assert base["kl"] > 0  # a live baseline, not the clamp
    weights = {n: p.detach() for n, p in base_policy.module.named_parameters()}
    for micro, (metrics, policy) in runs.items():
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected"):
            assert metrics[key] == pytest.approx(base[key], rel=1e-5, abs=1e-7), (micro, key)
        assert metrics["grad_norm"] == pytest.approx(base["grad_norm"], rel=1e-5), micro
        for n, p in policy.module.named_parameters():
            assert torch.allclose(p.detach(), weights[n], atol=1e-6), (micro, n)


def test_kto_reward_metrics_average_each_side(tiny):
    """rewards/chosen is the mean of beta * (log pi - log ref) over the step's 5 desirable
    rows, rewards/rejected over its 3 undesirable ones, computed here directly from the
    models (before the update: the step reports the forward it trained on)."""
    metrics, _ = kto_step(tiny, 2)
    torch.manual_seed(0)
    policy = build_policy(tiny, "float32", None, torch.device("cpu"), 1)
    ref = scaled_reference(tiny)
    batch = BATCHERS["kto"].collate(kto_rows(), 0)["main"]
    mask = (batch["labels"] != -100).float()
    with torch.no_grad():
        r = 0.5 * ((run_model(policy.module, batch, torch.device("cpu"), False) - ref(batch)) * mask).sum(-1)
    good = torch.tensor(LABELS, dtype=torch.bool)
    assert metrics["rewards/chosen"] == pytest.approx(float(r[good].mean()), rel=1e-5)
    assert metrics["rewards/rejected"] == pytest.approx(float(r[~good].mean()), rel=1e-5)


def _rank(rank, world, port, tiny, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        from tunefleet.train.state import gather_trainable

        metrics, policy = kto_step(tiny, 4, rank, world)
        weights = gather_trainable(policy)
        if rank == 0:
            torch.save({"metrics": metrics, "weights": weights}, out)
        torch.distributed.barrier()
    except BaseException:
        torch.distributed.destroy_process_group()
        raise
    os._exit(0)  # as in test_sharding_equivalence.py: gloo's teardown can abort a finished rank


@pytest.mark.slow
def test_kto_one_rank_equals_two_fsdp2_ranks(tiny, tmp_path):
    """The same 8 rows as one micro-batch on 1 rank, or on 2 FSDP2 ranks (gloo) with one
    micro-batch of 4 each: rank 0's rows [1, 1, 0, 0] and rank 1's [0, 1, 1, 1] would each
    give a different z0 and side means alone (as they did); the step's statistic is
    summed over both ranks, so loss, metrics and the update match the single rank's."""
    import socket

    import torch.multiprocessing as mp

    from tunefleet.train.state import gather_trainable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.pt"
    mp.spawn(_rank, args=(2, port, tiny, str(out)), nprocs=2)
    two = torch.load(out)
    one, policy = kto_step(tiny, 8)
    for key in ("loss", "kl", "rewards/chosen", "rewards/rejected"):
        assert two["metrics"][key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    weights = gather_trainable(policy)
    assert weights.keys() == two["weights"].keys()
    for k in weights:
        assert torch.allclose(weights[k], two["weights"][k], atol=1e-5), k
