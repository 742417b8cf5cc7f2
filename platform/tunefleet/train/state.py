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


def newest_valid(latest: Path, checkpoint=None) -> Path | None:
    """`latest` if it verifies, else the newest sibling `checkpoint_*` directory that does,
    with a warning naming what was skipped and why. None if no checkpoint verifies.

    `latest` is the local directory of Ray Train's checkpoint. When the run's storage is
    remote (s3://), that is a temporary download without siblings: they are listed on the
    storage of `checkpoint` (default: the Train context's current one) and downloaded one by
    one, into `latest` (Ray removes it with the download)."""
    import warnings

    for path in _candidates(latest, checkpoint):
        try:
            verify(path)
            return path
        except CheckpointError as err:
            warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
    return None


def _candidates(latest: Path, checkpoint):
    """`latest`, then its older siblings, newest first (local paths; remote ones fetched lazily)."""
    yield latest
    remote = _remote_checkpoint(checkpoint)
    if remote is None:
        yield from sorted((p for p in latest.parent.glob("checkpoint_*") if p.is_dir() and p != latest),
                          key=lambda p: p.name, reverse=True)
        return
    import os
    import posixpath

    from pyarrow import fs

    filesystem, path = remote.filesystem, remote.path.rstrip("/")
    parent, name = posixpath.split(path)
    infos = filesystem.get_file_info(fs.FileSelector(parent, allow_not_found=True))
    names = sorted((i.base_name for i in infos if i.type == fs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.base_name != name), reverse=True)
    for sibling in names:
        local = latest / f".tunefleet-fallback-{os.getpid()}" / sibling  # per process: ranks share `latest`
        local.mkdir(parents=True, exist_ok=True)
        fs.copy_files(f"{parent}/{sibling}", str(local), source_filesystem=filesystem,
                      destination_filesystem=fs.LocalFileSystem())
        yield local


def _remote_checkpoint(checkpoint):
    """The Ray Train checkpoint when it lives on a non-local filesystem, else None."""
    if checkpoint is None:
        try:
            import ray.train

            checkpoint = ray.train.get_checkpoint()
        except Exception:  # noqa: BLE001 - outside a Train worker: a plain local directory
            return None
    filesystem = getattr(checkpoint, "filesystem", None)
    if filesystem is None or filesystem.type_name == "local":
        return None
    return checkpoint
