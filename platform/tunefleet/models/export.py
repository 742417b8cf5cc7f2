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
