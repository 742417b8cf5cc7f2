"""`tunefleet export RUN_ID OUT`: a trained run's checkpoint -> one plain HF directory.

The MLflow run leads to its config and checkpoints (pipelines/resume.py); the checkpoint is
verified against its manifest; a LoRA adapter is merged into its base (a full-weights export
is copied); the directory is logged into the training run as an MLflow model and, with
`--register NAME`, becomes a new Model Registry version whose tags carry the lineage.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunefleet.models.checkpoint import CheckpointError, verify
from tunefleet.models.export import LINEAGE_FILE, ExportError, export_hf_dir, is_adapter_dir

CKPT = re.compile(r"^checkpoint_(\d{6})$")


@dataclass(frozen=True)
class ExportRequest:
    run_id: str
    out: str
    checkpoint: int | None = None  # step; None: the newest usable one
    register: str | None = None  # registered model name
    tracking_uri: str | None = None


@dataclass(frozen=True)
class ExportResult:
    out: Path
    step: int
    model_uri: str | None = None  # runs:/RUN_ID/exported/checkpoint_NNNNNN
    version: str | None = None  # registry version, with --register


def checkpoints(run_dir: Path) -> dict[int, Path]:
    """step -> checkpoint directory, ascending."""
    found = {int(m.group(1)): p for p in run_dir.glob("checkpoint_*") if p.is_dir() and (m := CKPT.match(p.name))}
    return dict(sorted(found.items()))


def _status(path: Path) -> str:
    """'ok' (has export/), 'rebuild' (verified, only the trainable weights) or why it is unusable."""
    try:
        verify(path)
    except CheckpointError as err:
        return f"corrupt: {err}"
    if (path / "export").is_dir():
        return "ok"
    return "rebuild" if (path / "weights.safetensors").is_file() else "no weights"


def _listing(found: dict[int, Path]) -> str:
    return "; ".join(f"{s} ({_status(p)})" for s, p in found.items()) or "none"


def choose_checkpoint(run_dir: Path, step: int | None) -> tuple[int, Path]:
    """The checkpoint to export: `step` exactly (refused if corrupt), else the newest verified
    one with export/, else the newest verified one (rebuilt from its trainable weights)."""
    found = checkpoints(run_dir)
    if step is not None:
        if step not in found:
            raise ExportError(f"no checkpoint {step} under {run_dir}; checkpoints: {_listing(found)}")
        status = _status(found[step])
        if status not in ("ok", "rebuild"):
            raise ExportError(f"refusing checkpoint {step}: {status}. Checkpoints: {_listing(found)}")
        return step, found[step]
    statuses = {s: _status(p) for s, p in found.items()}
    for wanted in ("ok", "rebuild"):
        usable = [s for s, st in statuses.items() if st == wanted]
        if usable:
            return usable[-1], found[usable[-1]]
    raise ExportError(f"no exportable checkpoint under {run_dir}; checkpoints: {_listing(found)}")


def rebuild_export(ckpt: Path, cfg, base_dir: Path, dest: Path) -> Path:
    """export/ as the final checkpoint would carry it, from `weights.safetensors` (the
    trainable weights named as in TokenLogpModel: `lm.` + HF or PEFT names)."""
    from safetensors.torch import load_file

    from tunefleet.models.export import export_adapter, export_full
    from tunefleet.models.registry import load_model

    weights = load_file(str(ckpt / "weights.safetensors"))
    lm = load_model(base_dir, "float32")
    if cfg.model.lora is None:
        return export_full(dest, base_dir, weights, tied=bool(getattr(lm.config, "tie_word_embeddings", False)))
    from tunefleet.models.lora import apply_lora

    lora = cfg.model.lora
    target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    peft = apply_lora(lm, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=target)
    return export_adapter(dest, peft, weights)


def parent_of(model_name: str, base_dir: Path) -> str:
    """The registry lineage of the run's starting model: `models:/NAME/VERSION` when it was
    itself a registered export (its lineage file says so), else the name the config used."""
    if model_name.startswith("models:/"):
        return model_name
    info = base_dir / LINEAGE_FILE
    if info.is_file():
        registered = json.loads(info.read_text()).get("registered")
        if registered:
            return registered
    return model_name


def _run_and_config(req: ExportRequest):
    from mlflow.tracking import MlflowClient

    from tunefleet.config import ConfigError
    from tunefleet.pipelines.resume import config_for_resume

    try:
        cfg = config_for_resume(req.run_id, (), req.tracking_uri)
    except ConfigError as err:
        raise ExportError(str(err).removeprefix("--resume: ")) from None
    if cfg.algorithm.VALUE_HEAD:
        raise ExportError(f"run {req.run_id} trained a reward model ({cfg.algorithm.type}): export writes causal "
                          f"LMs; score with `tunefleet score <checkpoint>/export ...` instead")
    client = MlflowClient(cfg.tracking.uri)
    return client, client.get_run(req.run_id), cfg


def run_export(req: ExportRequest) -> ExportResult:
    """Verify, merge or copy, log as an MLflow model, optionally register. See the module doc."""
    from tunefleet.models.registry import resolve_model
    from tunefleet.pipelines.train_job import storage_path
    from tunefleet.tracking import registry

    client, run, cfg = _run_and_config(req)
    run_dir = Path(storage_path(cfg)) / cfg.run.name
    step, ckpt = choose_checkpoint(run_dir, req.checkpoint)
    base_dir = Path(resolve_model(cfg.model.name))
    parent = parent_of(cfg.model.name, base_dir)
    lineage = {"run_id": req.run_id, "checkpoint_step": step, "checkpoint": str(ckpt), "base_model": cfg.model.name,
               "parent": parent, "dataset_digests": registry.dataset_digests(run)}
    with tempfile.TemporaryDirectory(prefix="tunefleet-export-") as tmp:
        src = ckpt / "export"
        if not src.is_dir():
            print(f"[export] {ckpt.name} has no export/: rebuilding it from the trainable weights", flush=True)
            src = rebuild_export(ckpt, cfg, base_dir, Path(tmp) / "export")
        kind = "merging the LoRA adapter into" if is_adapter_dir(src) else "copying full weights over"
        print(f"[export] run {req.run_id} {ckpt.name}: {kind} {cfg.model.name} -> {req.out}", flush=True)
        out = export_hf_dir(src, base_dir, req.out, lineage)
    model_uri = registry.log_hf_model(client, req.run_id, out, f"exported/{ckpt.name}")
    if not req.register:
        return ExportResult(out, step, model_uri)
    mv = registry.register_version(client, req.register, model_uri, req.run_id,
                                   registry.lineage_tags(run, step, parent))
    info = json.loads((out / LINEAGE_FILE).read_text())
    info["registered"] = f"models:/{mv.name}/{mv.version}"  # a run trained from `out` names this parent
    (out / LINEAGE_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))
    return ExportResult(out, step, model_uri, str(mv.version))


def list_models(name: str | None = None, tracking_uri: str | None = None) -> str:
    """`tunefleet models [NAME]`: the registered versions with their lineage, as a table."""
    from mlflow.tracking import MlflowClient

    from tunefleet.tracking.registry import format_table, list_versions
    from tunefleet.tracking.tracker import default_tracking_uri

    return format_table(list_versions(MlflowClient(tracking_uri or default_tracking_uri()), name))
