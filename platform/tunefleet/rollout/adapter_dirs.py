"""An engine's LoRA adapter directories, pruned so that a long run cannot fill the disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunefleet.rollout.sync import AdapterPayload, write_adapter


class AdapterDirs:
    """An engine's adapter directories (`root/lora-v<version>`): every LoRA sync writes one,
    so without pruning a long run fills the disk. Only the served one and the one being
    staged are kept; `close` (the pool's shutdown) deletes them all."""

    PREFIX = "lora-v"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.served: int | None = None

    def write(self, payload: AdapterPayload, version: int) -> Path:
        """Write the adapter staged as `version`; any other unserved one (aborted) goes."""
        self._prune(keep={self.served, version})
        return write_adapter(payload, self.root / f"{self.PREFIX}{version}")

    def commit(self, version: int | None) -> None:
        """`version` is served now (None: no adapter); older directories go."""
        self.served = version
        self._prune(keep={v for v in self._versions() if version is not None and v >= version})

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return [int(p.name[len(self.PREFIX):]) for p in self.root.iterdir()
                if p.name.startswith(self.PREFIX) and p.name[len(self.PREFIX):].isdigit()]

    def _prune(self, keep: set) -> None:
        for v in self._versions():
            if v not in keep:
                shutil.rmtree(self.root / f"{self.PREFIX}{v}", ignore_errors=True)
