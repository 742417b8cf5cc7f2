"""Helpers shared by tests (imported by name; tests/conftest.py puts this folder on sys.path)."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (../shared is only on developer/CI machines)")
    return p


def metric_history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    """step -> value of one metric of an MLflow run (last value wins per step)."""
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}
