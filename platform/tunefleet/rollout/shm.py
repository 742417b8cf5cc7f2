"""Same-node weight transport: a full sync's buckets in shared-memory files (/dev/shm).

Why not only the object store: `ray.put` copies every bucket into it, and Ray places each
large object at a fresh address, so the trainer and every engine take page faults on all
of it again: 0.02-0.47 s for 269 MB on a 2-core machine, the largest and most variable part
of a sync. Files that live for the whole run stay mapped in the trainer and in every engine
on the node, so a sync is one cast-copy into them plus the engines' copy out.

Two slots: the trainer writes the slot the pool is not serving, so the served version's
bytes stay intact for restoring a restarted engine and for a failed sync (nothing to undo).
Engines on other nodes get the same buckets through the object store (sync.py decides).
A process keeps one slot pair per pool (`slots_for`): which slot is served is a fact about
the pool, and the served files must outlive any one WeightSync (a restarted engine restores
from them). Files are removed by `release` (a trainer's end), else when the process exits;
files of processes that died without either (a killed Ray worker) are swept by the next
`SharedSlots` or engine started on the node.
"""

from __future__ import annotations

import itertools
import os
import uuid
import weakref
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
PREFIX = "tunefleet-weights-"


_BY_POOL: dict[str, SharedSlots] = {}


def slots_for(pool_name: str) -> SharedSlots:
    """This process's slot pair for the pool called `pool_name`."""
    if pool_name not in _BY_POOL:
        _BY_POOL[pool_name] = SharedSlots()
    return _BY_POOL[pool_name]


def release(pool_name: str) -> None:
    """Delete this process's files for the pool (engines keep what they have mapped)."""
    slots = _BY_POOL.pop(pool_name, None)
    if slots is not None:
        slots.close()


class SharedSlots:
    """Trainer side: two sets of bucket files; `allocate` makes files for `pack_buckets`."""

    def __init__(self, directory: Path = SHM_DIR):
        self.dir = Path(directory)
        self.tag = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self.slots: list[list[np.memmap]] = [[], []]
        self.live: int | None = None  # the slot the pool serves
        self._names = itertools.count()
        sweep_dead(self.dir)
        self._finalizer = weakref.finalize(self, _remove, self.dir, self.tag)

    def next_slot(self) -> int:
        """The slot to write the next sync into (never the one being served)."""
        return 1 if self.live == 0 else 0

    def allocate(self, nbytes: int) -> np.memmap:
        """A new file of `nbytes`, mapped read-write. Raises OSError (ENOSPC) when /dev/shm
        is too small: space is reserved up front, so a full tmpfs cannot SIGBUS a write."""
        path = self.dir / f"{self.tag}{next(self._names)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(nbytes, 1))
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return np.memmap(path, dtype=np.uint8, mode="r+", shape=(nbytes,))

    def store(self, slot: int, buckets: list[np.memmap]) -> tuple[str, ...]:
        """Record `slot`'s new buckets (its files), delete the files they replaced, and return
        the paths an engine maps."""
        keep = {b.filename for b in buckets}
        for old in self.slots[slot]:
            if old.filename not in keep:
                _unlink(old.filename)
        self.slots[slot] = list(buckets)
        return tuple(str(b.filename) for b in buckets)

    def close(self) -> None:
        self.slots = [[], []]
        self._finalizer()


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove(directory: Path, tag: str) -> None:
    for path in directory.glob(f"{tag}*"):
        _unlink(path)


def sweep_dead(directory: Path = SHM_DIR) -> int:
    """Delete bucket files whose writer process is gone. Returns how many."""
    removed = 0
    for path in directory.glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _unlink(path)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedMaps:
    """Engine side: read-only mappings of bucket files, kept across syncs so their pages
    stay mapped (mapping afresh every sync would fault every page in again)."""

    def __init__(self):
        self._maps: dict[str, np.memmap] = {}
        self._previous: tuple[str, ...] = ()

    def get(self, paths: tuple[str, ...]) -> list[np.memmap]:
        """The buckets at `paths`; mappings of files not among these or the previous call's
        are dropped (the trainer has moved past them)."""
        maps = [self._maps.get(p) if p in self._maps else self._open(p) for p in paths]
        keep = set(paths) | set(self._previous)
        self._maps = {p: m for p, m in self._maps.items() if p in keep}
        self._previous = tuple(paths)
        return maps

    def _open(self, path: str) -> np.memmap:
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        self._maps[path] = mapped
        return mapped
