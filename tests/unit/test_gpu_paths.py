"""CUDA/NCCL paths: run only where a GPU is present; skipped with a reason elsewhere."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]


def test_device_auto_picks_cuda():
    from tunefleet.train.loop import pick_device

    assert pick_device("auto").type == "cuda"


def test_policy_forward_backward_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFLEET_HOME", str(tmp_path))
    from tunefleet.data import collate
    from tunefleet.models.policy import build_policy
    from tunefleet.models.registry import resolve_model

    policy = build_policy(str(resolve_model("tiny-llama")), "float32", None, torch.device("cuda"), 1)
    batch = collate([{"input_ids": list(range(10)), "loss_mask": [0] * 4 + [1] * 6}], 0)
    logps = policy.module(input_ids=batch["input_ids"].cuda(), labels=batch["labels"].cuda())
    logps.sum().backward()
    assert logps.is_cuda
