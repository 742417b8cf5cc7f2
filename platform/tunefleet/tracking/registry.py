"""The MLflow Model Registry side of `tunefleet export --register` and `tunefleet models`.

A registered version points at an MLflow model logged into the training run
(`runs:/RUN_ID/exported/checkpoint_NNNNNN`) and carries its lineage as tags, so the registry
alone answers "which run, which step, which data, trained from what, how good".
Driver side only, with an explicit `MlflowClient` (tracker.py's rule).
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

TAG_RUN, TAG_STEP, TAG_DATA = "tunefleet.run_id", "tunefleet.checkpoint_step", "tunefleet.dataset_digests"
TAG_PARENT, TAG_OBJECTIVE, TAG_METRIC = "tunefleet.parent", "tunefleet.objective", "tunefleet.objective_metric"
# The run's objective, best first: the evaluation work's `eval.objective` when it exists, else
# the final task accuracy every task run records.
OBJECTIVE_METRICS = ("eval.objective", "eval/accuracy_after")
COLUMNS = ("name", "version", "run_id", "step", "parent", "objective", "created")


def dataset_digests(run) -> dict[str, str]:
    """{dataset name: digest} from the run's `dataset.<name>.digest` tags (tracker.log_dataset)."""
    tags = run.data.tags
    return {k[len("dataset."):-len(".digest")]: v for k, v in sorted(tags.items())
            if k.startswith("dataset.") and k.endswith(".digest")}


def objective(run) -> tuple[str, float] | None:
    """(metric name, value) of the run's objective, or None when it records none."""
    for name in OBJECTIVE_METRICS:
        if name in run.data.metrics:
            return name, float(run.data.metrics[name])
    return None


def lineage_tags(run, step: int, parent: str) -> dict[str, str]:
    tags = {TAG_RUN: run.info.run_id, TAG_STEP: str(step), TAG_DATA: json.dumps(dataset_digests(run)),
            TAG_PARENT: parent}
    obj = objective(run)
    if obj is not None:
        tags[TAG_METRIC], tags[TAG_OBJECTIVE] = obj[0], repr(obj[1])
    return tags


def _pip_requirements() -> list[str]:
    """Pinned from this environment: MLflow's own inference imports the model in a subprocess."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("transformers", "torch", "safetensors")]


def log_hf_model(client, run_id: str, model_dir: str | Path, artifact_path: str) -> str:
    """Log the HF directory into run `run_id` as an MLflow `transformers` model (text
    generation); returns its `runs:/` URI. If the flavour cannot save it (its supported
    transformers range lags ours) the directory is logged as plain artifacts, with a warning:
    the files are what users load either way."""
    with tempfile.TemporaryDirectory(prefix="tunefleet-mlmodel-") as tmp:
        try:
            import mlflow.transformers

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mlflow.transformers.save_model(transformers_model=str(model_dir), path=f"{tmp}/m",
                                               task="text-generation", pip_requirements=_pip_requirements())
            client.log_artifacts(run_id, f"{tmp}/m", artifact_path)
        except Exception as err:  # noqa: BLE001 - the registry entry matters more than the flavour
            warnings.warn(f"mlflow.transformers could not save {model_dir} ({err}); logged as plain files",
                          stacklevel=2)
            client.log_artifacts(run_id, str(model_dir), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def register_version(client, name: str, source: str, run_id: str, tags: dict[str, str]):
    """A new version of registered model `name` (created when missing). Returns the ModelVersion."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="registered by tunefleet export")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(name, source, run_id=run_id, tags=tags)


def list_versions(client, name: str | None = None) -> list[dict[str, str]]:
    """One row per registered version (name, then version ascending), with its lineage."""
    flt = f"name = '{name}'" if name else None
    rows = []
    for mv in client.search_model_versions(flt):
        tags = mv.tags or {}
        obj = tags.get(TAG_OBJECTIVE)
        rows.append({
            "name": mv.name, "version": str(mv.version), "run_id": mv.run_id or tags.get(TAG_RUN, ""),
            "step": tags.get(TAG_STEP, ""), "parent": tags.get(TAG_PARENT, ""),
            "objective": f"{tags.get(TAG_METRIC, '')}={float(obj):.4g}" if obj else "",
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
        })
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


def format_table(rows: list[dict[str, str]]) -> str:
    """A fixed-width text table of `list_versions` rows."""
    if not rows:
        return "no registered models"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
