"""The vLLM worker extension: methods vLLM mixes into its worker class
(`LLM(worker_extension_cls="tunefleet.rollout.worker_ext.WeightLoaderExtension")`) and that
`llm.collective_rpc(name, args=...)` calls on every worker.

Why a named extension method and not a function sent over RPC: functions need
VLLM_ALLOW_INSECURE_SERIALIZATION=1, and a plain `model.load_weights` after start fails on
CPU (the CPU backend repacks weights, leaving size-0 parameters); the worker's
`reload_weights` goes through vLLM's layerwise reload, which re-runs that processing.

Kept free of heavy imports: vLLM imports this module by name inside its worker.
"""

from __future__ import annotations


class WeightLoaderExtension:
    """Mixed into vLLM's worker (`self` is the worker)."""

    def tunefleet_reload(self, named_tensors) -> int:
        """Load `named_tensors` (a list of (HF checkpoint name, tensor)) in place.

        In-process engines (our default) get the tensors by reference; a multi-process
        engine would get them pickled. Returns how many tensors were given.
        """
        items = list(named_tensors)
        self.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)
        return len(items)

    def tunefleet_reload_from_path(self, path: str) -> None:
        """Reload the weights of a model directory (used to roll back to the base model)."""
        self.reload_weights(weights_path=path, is_checkpoint_format=True)
