"""What `tunefleet sweep --resume NAME` needs to pick up a campaign whose driver died.

When a campaign starts, its driver writes `$TUNEFLEET_HOME/campaigns/<NAME>/state.json`: the
resolved campaign (so the same trials are planned again, with the same run names: each
trial's training then resumes its own checkpoints and its own MLflow child run), the parent
MLflow run, the tracking URI and Tune's experiment path. The same file is logged to the
parent run (`campaign/state.json`), so a driver on another machine finds it through MLflow.

While it runs, the driver also records what Tune's own restore does not keep: which trials a
scheduler or a budget stopped, with the result each was stopped on (`stopped.json`), and the
training tokens every trial has reported (`tokens.json`, for the campaign's token budget).
Imports neither torch nor Ray.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tunefleet.config import ConfigError

STATE_TAG = "tunefleet.campaign_run"  # the parent run's tag holding the campaign's NAME
STATE_ARTIFACT = "campaign/state.json"


def state_dir(name: str) -> Path:
    """`$TUNEFLEET_HOME/campaigns/<name>/` (created)."""
    from tunefleet.paths import tunefleet_home

    path = tunefleet_home() / "campaigns" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data) -> None:
    """Atomically: a driver killed mid-write leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def save_state(name: str, state: dict) -> Path:
    path = state_dir(name) / "state.json"
    write_json(path, state)
    return path


def load_state(name: str, tracking_uri: str | None) -> dict:
    """The state of campaign `name`: the local file, else the parent run's artifact found
    through MLflow (tag tunefleet.campaign_run). ConfigError naming --resume when neither is."""
    local = read_json(state_dir(name) / "state.json", None)
    if local is not None:
        return local
    from mlflow.tracking import MlflowClient

    from tunefleet.tracking.tracker import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`{STATE_TAG}` = '{name}'", max_results=1) if exps else []
    if not runs:
        raise ConfigError("--resume", f"no campaign {name!r}: no {state_dir(name) / 'state.json'} and no MLflow run "
                          f"tagged {STATE_TAG}={name} at {uri}; allowed: the NAME a `tunefleet sweep` printed "
                          "(`[sweep] campaign NAME: ...`)")
    with tempfile.TemporaryDirectory(prefix="tunefleet-resume-") as tmp:
        return json.loads(Path(client.download_artifacts(runs[0].info.run_id, STATE_ARTIFACT, tmp)).read_text())


def _scalars(result: dict) -> dict:
    """The JSON-safe numbers and strings of a Tune result (it also holds configs, dates...)."""
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in result.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


class StopLog:
    """Trial index -> {"reason": ..., and the result it was stopped on}, kept on disk."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / "stopped.json"

    def record(self, index: int, reason: str, result: dict) -> None:
        data = self.load()
        data.setdefault(index, {"reason": reason, **_scalars(result)})
        write_json(self.path, {str(k): v for k, v in data.items()})

    def load(self) -> dict[int, dict]:
        return {int(k): v for k, v in read_json(self.path, {}).items()}


class TokenLog:
    """Trial id -> the training tokens it last reported, kept on disk (the token budget)."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / "tokens.json"
        self._tokens: dict | None = None

    def update(self, trial_id: str, tokens: float) -> float:
        """Record `trial_id`'s count; returns the campaign's total."""
        if self._tokens is None:  # lazily: after a restore this object comes from Tune's pickle
            self._tokens = read_json(self.path, {})
        if tokens > self._tokens.get(trial_id, 0.0):
            self._tokens[trial_id] = float(tokens)
            write_json(self.path, self._tokens)
        return sum(self._tokens.values())

    def total(self) -> float:
        return sum(read_json(self.path, {}).values())
