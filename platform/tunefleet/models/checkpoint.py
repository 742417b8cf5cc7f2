"""Checkpoint directories with a manifest: written atomically, verified on load.

Layout of a checkpoint directory:
  weights.safetensors   trainable weights (full model, or only the LoRA adapter)
  optimizer.pt          optimizer state (full, unsharded)
  state.json            step, data position, scheduler state
  rng.pt                torch / python RNG states
  manifest.json         {"files": {name: {"size": int, "sha256": str}}, "format": 1}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing files, truncated or corrupt."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> dict:
    """Hash every file in `directory` (except the manifest) and write manifest.json last,
    so a directory without a manifest is by definition incomplete."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = str(p.relative_to(directory))
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"format": FORMAT_VERSION, "files": files}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / MANIFEST)
    return manifest


def verify(directory: str | Path) -> dict:
    """Check sizes and sha256 against the manifest; raise CheckpointError naming the first
    bad file. Returns the manifest."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{directory}: no {MANIFEST} (incomplete or foreign checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{mpath}: unreadable manifest ({err})") from None
    for rel, meta in manifest.get("files", {}).items():
        p = directory / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: listed in the manifest but missing")
        if p.stat().st_size != meta["size"]:
            raise CheckpointError(f"{p}: size {p.stat().st_size} != {meta['size']} in the manifest (truncated?)")
        if _sha256(p) != meta["sha256"]:
            raise CheckpointError(f"{p}: sha256 mismatch (corrupt)")
    return manifest


def atomic_dir(final: str | Path, fill) -> Path:
    """Create directory `final` atomically: `fill(tmpdir)` writes the files, a manifest is
    added, then the temporary directory is renamed into place. A crash leaves no half
    directory under the final name."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp"))
    try:
        fill(tmp)
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
