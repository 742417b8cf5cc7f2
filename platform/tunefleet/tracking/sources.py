"""`models:/NAME/VERSION` -> a local HF directory, downloaded once into a cache.

A registered version's source is the MLflow model that registry.log_hf_model logged: the
`transformers` flavour keeps the whole HF directory under `model/` (config, safetensors,
tokenizer, chat template, tunefleet_export.json); the plain-files fallback keeps it at the
root. The download lands in `tunefleet_home()/registry/<store>/<NAME>/<VERSION>` (`<store>`:
a digest of the tracking URI, since two stores may both have `models:/x/1`), published with
an atomic rename so concurrent processes share one copy. Driver side (MlflowClient).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from tunefleet.paths import tunefleet_home

URI = re.compile(r"^models:/([^/]+)/(\d+)$")
COMPLETE = ".complete"


class RegistryError(ValueError):
    """A `models:/` URI that names no registered version we can use."""


def is_registered_uri(spec: str) -> bool:
    return spec.startswith("models:/")


def parse_uri(spec: str) -> tuple[str, str]:
    """(NAME, VERSION) of `models:/NAME/VERSION`; RegistryError for any other form."""
    m = URI.match(spec)
    if not m:
        raise RegistryError(f"{spec!r}: give a registered model as models:/NAME/VERSION (a version number)")
    return m.group(1), m.group(2)


def hf_dir_in(root: Path) -> Path:
    """The HF model directory inside a downloaded MLflow model (see the module doc)."""
    for cand in (root / "model", root):
        if (cand / "config.json").is_file():
            return cand
    raise RegistryError(f"{root} holds no HF model directory (no config.json at its root or under model/)")


def cache_dir(tracking_uri: str, name: str, version: str) -> Path:
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    return tunefleet_home() / "registry" / store / name / version


def registered_model_dir(spec: str, tracking_uri: str | None = None) -> Path:
    """The local HF directory of registered version `spec` (models:/NAME/VERSION), downloaded
    on first use. RegistryError when the version does not exist."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tunefleet.tracking.tracker import default_tracking_uri

    name, version = parse_uri(spec)
    uri = tracking_uri or default_tracking_uri()
    final = cache_dir(uri, name, version)
    if (final / COMPLETE).is_file():
        return hf_dir_in(final)
    try:
        source = MlflowClient(uri).get_model_version(name, version).source
    except MlflowException as err:
        raise RegistryError(f"{spec}: no such registered version in {uri} ({err.message})") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{version}.tmp"))
    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp / "dl"),
                                                        tracking_uri=uri))
        hf_dir_in(root)  # refuse a source that is no HF model before publishing it
        os.rename(root, tmp / "m")
        (tmp / "m" / COMPLETE).write_text(f"{spec} {source}\n")
        try:
            os.rename(tmp / "m", final)
        except OSError:
            if not (final / COMPLETE).is_file():  # not another process's finished copy: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return hf_dir_in(final)
