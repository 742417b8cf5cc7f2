"""Thin helpers around PEFT LoRA: wrap a model, read and save its adapter weights."""

from __future__ import annotations

from pathlib import Path

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
