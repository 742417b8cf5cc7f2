"""Write trained weights as something users load directly: a PEFT adapter directory for
LoRA, or a full HF model directory (config + tokenizer + safetensors) otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

PREFIX = "lm."  # TokenLogpModel keeps the LM under `.lm`


def _strip(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in weights.items()}


def export_adapter(dest: Path, peft_model, weights: dict[str, torch.Tensor]) -> Path:
    """`peft_model`: the PeftModel (its config is reused); `weights`: gathered trainable
    weights named as in TokenLogpModel. Writes adapter_config.json + adapter_model.safetensors."""
    from peft import get_peft_model_state_dict

    dest.mkdir(parents=True, exist_ok=True)
    adapter = get_peft_model_state_dict(peft_model, state_dict=_strip(weights))
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(dest / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(str(dest))
    return dest


def export_full(dest: Path, model_dir: str | Path, weights: dict[str, torch.Tensor], tied: bool) -> Path:
    """Full HF directory: the base dir's config/tokenizer files plus the new weights."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")) and not f.name.startswith("."):
            shutil.copy2(f, dest / f.name)
    sd = _strip(weights)
    if tied:
        sd.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors refuses shared storage
    for stale in dest.glob("model.safetensors.index.json"):
        stale.unlink()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


# --------------------------------------------------------------------------- release exports
# `tunefleet export`: one plain HF directory (safetensors, tokenizer, chat template) that
# transformers and vLLM load without PEFT or tunefleet, plus `tunefleet_export.json` lineage.
LINEAGE_FILE = "tunefleet_export.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ExportError(RuntimeError):
    """An export that cannot be written as asked (the message says what to do instead)."""


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_digest(adapter_dir: str | Path) -> str:
    """sha256 of the adapter's weights file: names exactly which adapter was merged."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(adapter_dir) / ADAPTER_WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fresh_dest(dest: str | Path) -> Path:
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"{dest} exists and is not empty; choose a new output directory")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, dest: str | Path) -> Path:
    """Load the base in fp32, apply the PEFT adapter, fold it in (W + s*B@A) and save a plain
    HF directory: safetensors weights (tied embeddings stay one tensor: save_pretrained
    writes it once and the config keeps `tie_word_embeddings`), config, generation config and
    the base's tokenizer files, chat template included."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = _fresh_dest(dest)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(dest), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(dest))
    return dest


def _copy_full(src: Path, dest: Path) -> Path:
    """A full-weights export is already a plain HF dir: copy it (safetensors only)."""
    dest = _fresh_dest(dest)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".bin", ".pt", ".gguf")) and f.name != LINEAGE_FILE:
            shutil.copy2(f, dest / f.name)
    return dest


def export_hf_dir(src: str | Path, base_dir: str | Path | None, dest: str | Path, lineage: dict) -> Path:
    """`src`: a checkpoint's export/ (PEFT adapter dir, merged onto `base_dir`, or a full HF
    dir, copied). Writes `dest` plus LINEAGE_FILE = `lineage` + kind (+ adapter digest)."""
    import json

    src = Path(src)
    if is_adapter_dir(src):
        if base_dir is None:
            raise ExportError(f"{src} is a LoRA adapter: merging it needs its base model directory")
        out = merge_adapter(base_dir, src, dest)
        info = {**lineage, "kind": "lora-merged", "adapter_digest": adapter_digest(src)}
    else:
        if not (src / "config.json").is_file():
            raise ExportError(f"{src} is neither a PEFT adapter dir nor an HF model dir (no config.json)")
        out = _copy_full(src, Path(dest))
        info = {**lineage, "kind": "full"}
    (out / LINEAGE_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))
    return out
