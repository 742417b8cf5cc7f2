"""Filesystem locations shared by tunefleet components.

Everything tunefleet caches (converted models, ...) lives under one home directory so
that a single environment variable can relocate it (tests point it at a tmp dir).
"""

from __future__ import annotations

import os
from pathlib import Path


def tunefleet_home() -> Path:
    """Return the tunefleet home: ``$TUNEFLEET_HOME`` or ``~/.cache/tunefleet``.

    The directory is created on demand so callers can write into it straight away.
    """
    env = os.environ.get("TUNEFLEET_HOME")
    home = Path(env).expanduser() if env else Path.home() / ".cache" / "tunefleet"
    home.mkdir(parents=True, exist_ok=True)
    return home


def models_dir() -> Path:
    """Return (and create) the directory holding materialised model aliases."""
    path = tunefleet_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
