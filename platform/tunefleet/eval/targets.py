"""TARGET of `tunefleet eval`: what model to evaluate, resolved to local directories.

A TARGET is, in this order: a PEFT adapter directory (adapter_config.json; its base is
`--base` or the adapter's `base_model_name_or_path`), an HF model directory (config.json), a
model alias (models/registry.py), or an MLflow run id of a training run, which leads (as
`tunefleet export` does, pipelines/export_job.py) to its newest verified checkpoint's export/.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunefleet.models.export import ADAPTER_CONFIG, ExportError, is_adapter_dir


@dataclass(frozen=True)
class Target:
    """`model_dir`: a full HF directory (the base, when `adapter` is set); `run_id`: the
    training run the weights came from (lineage), if any."""

    spec: str
    model_dir: str
    adapter: str | None = None
    run_id: str | None = None
    checkpoint: str | None = None

    def tags(self) -> dict[str, str]:
        return {"tunefleet.eval.target": self.spec, "tunefleet.model": self.model_dir,
                "tunefleet.adapter": self.adapter or "", "tunefleet.source_run_id": self.run_id or "",
                "tunefleet.eval.checkpoint": self.checkpoint or ""}


class TargetError(ValueError):
    """A TARGET that is no model we can find."""


def _adapter_base(adapter: Path, base: str | None) -> str:
    from tunefleet.models.registry import resolve_model

    name = base or json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not name:
        raise TargetError(f"{adapter} is a LoRA adapter without base_model_name_or_path: give --base")
    try:
        return str(resolve_model(name))
    except ValueError as err:
        raise TargetError(f"{adapter}: its base model {name!r} is not found ({err}); give --base") from None


def _from_run(run_id: str, tracking_uri: str | None) -> Target:
    from tunefleet.models.registry import resolve_model
    from tunefleet.pipelines.export_job import ExportRequest, _run_and_config, choose_checkpoint, rebuild_export
    from tunefleet.pipelines.train_job import storage_path

    try:
        _, _, cfg = _run_and_config(ExportRequest(run_id, "", tracking_uri=tracking_uri))
        step, ckpt = choose_checkpoint(Path(storage_path(cfg)) / cfg.run.name, None)
    except ExportError as err:
        raise TargetError(f"TARGET {run_id!r}: {err}") from None
    base = resolve_model(cfg.model.name)
    export = ckpt / "export"
    if not export.is_dir():
        # Only the trainable weights were kept: rebuild export/ in a temp dir (kept for this process).
        export = rebuild_export(ckpt, cfg, base, Path(tempfile.mkdtemp(prefix="tunefleet-eval-")) / "export")
    if is_adapter_dir(export):
        return Target(run_id, str(base), str(export), run_id, str(ckpt))
    return Target(run_id, str(export), None, run_id, str(ckpt))


def resolve_target(spec: str, base: str | None = None, tracking_uri: str | None = None) -> Target:
    """The Target that `spec` names (see the module doc); TargetError when nothing matches."""
    from tunefleet.models.registry import ALIASES, resolve_model

    path = Path(spec).expanduser()
    if path.is_dir() and is_adapter_dir(path):
        return Target(spec, _adapter_base(path, base), str(path.resolve()))
    if path.is_dir() and (path / "config.json").is_file():
        return Target(spec, str(path.resolve()))
    if spec in ALIASES:
        return Target(spec, str(resolve_model(spec)))
    if path.exists():
        raise TargetError(f"TARGET {spec!r}: a path, but neither an HF model dir (config.json) "
                          f"nor a LoRA adapter dir ({ADAPTER_CONFIG})")
    if spec.isalnum() and len(spec) >= 16:
        return _from_run(spec, tracking_uri)
    raise TargetError(f"TARGET {spec!r}: not a model directory, adapter directory, alias "
                      f"({', '.join(sorted(ALIASES))}) or MLflow run id")
