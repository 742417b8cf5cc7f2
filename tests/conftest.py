"""Shared fixtures: every test gets its own TUNEFLEET_HOME for MLflow and runs, but the model
cache is shared (converting SmolLM2 once per machine, not once per test)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for tf_testutil


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An isolated TUNEFLEET_HOME whose models/ points at the shared cache."""
    real = Path(os.environ.get("TUNEFLEET_HOME", Path.home() / ".cache" / "tunefleet"))
    (real / "models").mkdir(parents=True, exist_ok=True)
    h = tmp_path / "home"
    h.mkdir()
    (h / "models").symlink_to(real / "models")
    monkeypatch.setenv("TUNEFLEET_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h
