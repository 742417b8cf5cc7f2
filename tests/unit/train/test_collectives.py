"""Collectives use tensors on the device of the group's backend: NCCL rejects CPU tensors,
which crashed every multi-GPU run on its first step's metrics. No test here has two GPUs (or
one), so torch.distributed is faked: the backend says "nccl", CUDA's current device is 1, and
the fake collectives check what they are handed."""

import types

import pytest
import torch
import torch.distributed as dist

from tunefleet.algorithms import get_loss
from tunefleet.config import SftConfig
from tunefleet.data.batching import BATCHERS
from tunefleet.train import collectives
from tunefleet.train.step import StepContext, count_targets, train_step

CUDA1 = torch.device("cuda", 1)


@pytest.fixture
def nccl(monkeypatch):
    """A fake NCCL default group on GPU 1. Tensors built by collectives._buffer are made on
    the CPU (there is no GPU) but remembered with the device they were asked for."""
    built: dict[int, torch.device] = {}

    def buffer(values, device):
        t = torch.tensor(values, dtype=torch.float64)
        built[id(t)] = torch.device(device)
        return t

    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(collectives, "_buffer", buffer)
    return built


@pytest.mark.parametrize("backend,want", [("nccl", CUDA1), ("gloo", torch.device("cpu")),
                                          ("cpu:gloo,cuda:nccl", torch.device("cpu"))])
def test_collective_device_follows_the_backend(monkeypatch, backend, want):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert collectives.collective_device() == want


def test_buffer_is_float64_on_the_asked_device():
    t = collectives._buffer([1.0, 2.5], torch.device("meta"))
    assert t.device.type == "meta" and t.dtype == torch.float64 and t.shape == (2,)
    assert collectives._buffer([0.1], torch.device("cpu")).tolist() == [0.1]


class _LogpModule(torch.nn.Module):
    """A stand-in policy: logps = w on every target token (labels != -100), 0 elsewhere."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-1.0))

    def forward(self, input_ids, labels, position_ids=None):
        return self.w * (labels != -100).float()


def test_step_metrics_are_reduced_on_the_group_device(monkeypatch, nccl):
    """train_step with world 2 under NCCL: the metric sums go to dist.all_reduce as one
    float64 tensor on cuda:1. The fake all-reduce doubles it (two ranks with the same rows):
    sft loss = -w * tokens / tokens = 1 per rank -> 2; real_tokens doubles too."""
    reduced = []

    def all_reduce(t, op=None, group=None, async_op=False):
        assert nccl.get(id(t)) == CUDA1, "a collective tensor not on the NCCL group's device"
        assert t.dtype == torch.float64
        reduced.append(t.clone())
        t.mul_(2)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    module = _LogpModule()
    policy = types.SimpleNamespace(module=module, sharded=False, value_head=False,
                                   trainable_parameters=lambda: list(module.parameters()))
    opt = torch.optim.SGD(module.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctx = StepContext(policy, opt, sched, get_loss("sft"), SftConfig(), torch.device("cpu"), 2, 0.0, False)
    rows = [{"input_ids": [1, 2, 3, 4], "loss_mask": [0, 0, 1, 1]}]
    mb = BATCHERS["single"].collate(rows, 0)
    metrics = train_step(ctx, [mb], count_targets(mb), 1)
    assert len(reduced) == 1
    assert metrics["loss"] == pytest.approx(2.0) and metrics["real_tokens"] == 8.0


def test_object_broadcasts_name_the_group_device(monkeypatch, nccl):
    """control.stop_requested and rollout_source (broadcast_object) hand broadcast_object_list the
    NCCL device (it serialises the objects into a tensor on it); rank 1 gets rank 0's object."""
    from tunefleet.train import control, rollout_source

    calls = []

    def broadcast_object_list(box, src=None, group=None, device=None, group_src=None):
        calls.append(device)
        assert device == CUDA1, f"object broadcast on {device}, not the NCCL device"
        box[0] = box[0] if box[0] is not None else "from rank 0"

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
    assert control.stop_requested(None, 1, 2) == "from rank 0"
    assert rollout_source.broadcast_object(None, 1, 2) == "from rank 0"
    assert rollout_source.broadcast_object({"rows": [1]}, 0, 2) == {"rows": [1]}
    assert calls == [CUDA1] * 3


def test_all_gather_goes_through_collectives(monkeypatch, nccl):
    """rollout_source (all_gather_object): every rank's object, in rank order (world 1: no collective)."""
    from tunefleet.train import rollout_source

    def all_gather_object(out, obj, group=None):
        out[:] = [obj, {"rank": 1}]

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    assert rollout_source.all_gather_object({"rank": 0}, 2) == [{"rank": 0}, {"rank": 1}]
    assert rollout_source.all_gather_object("x", 1) == ["x"]
    assert collectives.broadcast_object("y", 0, 1) == "y" and collectives.all_reduce_sum([1.0], 1) == [1.0]
