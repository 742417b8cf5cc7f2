"""Collectives on the training process group, on the device its backend moves.

NCCL only moves CUDA tensors: an all-reduce of a CPU tensor fails ("No backend type
associated with device type cpu"), which crashed every multi-GPU run on its first step's
metrics. So every collective of the training code goes through here, and the device is
chosen in one place (`collective_device`). A single process (world 1) never calls torch.distributed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def collective_device() -> torch.device:
    """cuda:<current device> when the default group moves tensors with NCCL alone, else cpu
    (gloo; and a "cpu:gloo,cuda:nccl" group, which reduces CPU tensors with gloo). Under
    NCCL the current device must be this rank's GPU: loop._setup calls torch.cuda.set_device."""
    backend = str(dist.get_backend())
    if "nccl" in backend and "cpu:" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _buffer(values: list[float], device: torch.device) -> torch.Tensor:
    """[len(values)] float64 on `device` (NCCL reduces float64; sums of metrics keep their digits)."""
    return torch.tensor(values, dtype=torch.float64, device=device)


def all_reduce_sum(values: list[float], world: int) -> list[float]:
    """Element-wise sum of `values` over every rank (same length and order on each)."""
    if world == 1:
        return list(values)
    t = _buffer(values, collective_device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, rank: int, world: int, src: int = 0):
    """Rank `src`'s `obj` (any picklable) on every rank."""
    if world == 1:
        return obj
    box = [obj if rank == src else None]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


def all_gather_object(obj, world: int) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank. torch's all_gather_object takes no
    device: under NCCL it uses the current CUDA device, hence set_device (see above)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
