"""`tunefleet run --resume RUN_ID`: continue a stopped (or crashed) run from its newest
checkpoint, into the same MLflow run.

The MLflow run holds everything needed: its resolved `config.yaml` artifact and the
`tunefleet.run_name` tag, which names the Ray Train run directory with the checkpoints.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from tunefleet.config import Config, ConfigError, load_config


def config_for_resume(run_id: str, overrides: Sequence[str] = (), tracking_uri: str | None = None) -> Config:
    """The config of MLflow run `run_id` (plus `overrides`), pinned to its run name."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tunefleet.tracking.tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError("--resume", f"no MLflow run {run_id!r} at {uri}: {err.message}") from None
    name = run.data.tags.get("tunefleet.run_name")
    if not name:
        raise ConfigError("--resume", f"run {run_id} was not started by tunefleet (no tunefleet.run_name tag)")
    with tempfile.TemporaryDirectory(prefix="tunefleet-resume-") as tmp:
        try:
            path = client.download_artifacts(run_id, "config.yaml", tmp)
        except MlflowException as err:
            raise ConfigError("--resume", f"run {run_id} has no config.yaml artifact: {err.message}") from None
        # The same tracking store and run name: checkpoints and MLflow run are found again.
        return load_config(Path(path), [*overrides, f"run.name={name}", f"tracking.uri={uri}"])
