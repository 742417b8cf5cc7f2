"""Model registry, tiny test model and LoRA helpers (no Ray or vLLM imports)."""

from tunefleet.models.lora import apply_lora, lora_state_dict, save_adapter
from tunefleet.models.registry import (
    ALIASES,
    load_model,
    load_tokenizer,
    resolve_model,
    smollm2_gguf_path,
)
from tunefleet.models.tiny import build_tiny_llama

__all__ = [
    "ALIASES",
    "apply_lora",
    "build_tiny_llama",
    "load_model",
    "load_tokenizer",
    "lora_state_dict",
    "resolve_model",
    "save_adapter",
    "smollm2_gguf_path",
]
