"""Save and restore the full training state (weights, optimizer, scheduler, RNG, step)
under FSDP2 or a plain module, as a verified checkpoint directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tunefleet.models.checkpoint import CheckpointError, verify
from tunefleet.models.policy import Policy

WEIGHTS, OPTIM, STATE, RNG = "weights.safetensors", "optimizer.pt", "state.json", "rng.pt"


def gather_trainable(policy: Policy) -> dict[str, torch.Tensor]:
    """Full (unsharded) trainable weights on CPU. Collective under FSDP2: call on every rank."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(policy.module, options=opts)
    keep = policy.trainable_names()
    return {k: v.contiguous() for k, v in full.items() if k in keep}


def gather_full(policy: Policy) -> dict[str, torch.Tensor]:
    """Every weight, frozen ones too, unsharded on CPU (rank 0; others get {}). Collective."""
    return get_model_state_dict(policy.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_training_state(directory: Path, policy: Policy, optimizer, scheduler, step: int, rank: int,
                        extra: dict | None = None) -> None:
    """Collective: every rank calls; rank 0 writes the files (the caller adds the manifest)."""
    weights = gather_trainable(policy)
    optim = get_optimizer_state_dict(policy.module, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / WEIGHTS))
    torch.save(optim, directory / OPTIM)
    state = {"step": step, "scheduler": scheduler.state_dict(), **(extra or {})}
    (directory / STATE).write_text(json.dumps(state, indent=1))
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, directory / RNG)


def load_training_state(directory: Path, policy: Policy, optimizer, scheduler) -> dict:
    """Verify the checkpoint, then load it into every rank. Returns state.json's content."""
    verify(directory)
    weights = load_file(str(directory / WEIGHTS))
    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(policy.module, weights, options=opts)
    optim = torch.load(directory / OPTIM, weights_only=False)
    set_optimizer_state_dict(policy.module, optimizer, optim, options=StateDictOptions(full_state_dict=True))
    state = json.loads((directory / STATE).read_text())
    scheduler.load_state_dict(state["scheduler"])
    rng = torch.load(directory / RNG, weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return state


def newest_valid(latest: Path) -> Path | None:
    """`latest` if it verifies, else the newest sibling `checkpoint_*` directory that does,
    with a warning naming what was skipped and why. None if no checkpoint verifies."""
    import warnings

    candidates = [latest] + sorted((p for p in latest.parent.glob("checkpoint_*") if p.is_dir() and p != latest),
                                   key=lambda p: p.name, reverse=True)
    for path in candidates:
        try:
            verify(path)
            return path
        except CheckpointError as err:
            warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
    return None
