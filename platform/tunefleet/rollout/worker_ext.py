"""The vLLM worker extension: methods vLLM mixes into its worker class
(`LLM(worker_extension_cls="tunefleet.rollout.worker_ext.WeightLoaderExtension")`) and that
`llm.collective_rpc(name, args=...)` calls on every worker.

Why a named extension method and not a function sent over RPC: functions need
VLLM_ALLOW_INSECURE_SERIALIZATION=1. On CPU, weights load in place when the engine kept
its plain weights (cpu_weights.py); otherwise (GPU, or the plain weights are gone) through
the worker's `reload_weights`, vLLM's layerwise reload, which re-runs its weight processing.

Kept free of heavy imports: vLLM imports this module by name inside its worker.
"""

from __future__ import annotations


class WeightLoaderExtension:
    """Mixed into vLLM's worker (`self` is the worker)."""

    def tunefleet_reload(self, named_tensors) -> str:
        """Load `named_tensors` (a list of (HF checkpoint name, tensor)) in place.

        In-process engines (our default) get the tensors by reference; a multi-process
        engine would get them pickled. Returns how they were loaded: "in_place" or "reload".
        """
        return self._tunefleet_load(list(named_tensors))

    def tunefleet_reload_from_path(self, path: str) -> str:
        """Load the weights of a model directory (used to roll back to the base model)."""
        from pathlib import Path

        from safetensors.torch import load_file

        return self._tunefleet_load([p for f in sorted(Path(path).glob("*.safetensors")) for p in load_file(f).items()])

    def _tunefleet_load(self, items: list) -> str:
        from tunefleet.rollout import cpu_weights

        model = self.model_runner.get_model()
        if not cpu_weights.updatable_in_place(model):
            self.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)
            return "reload"
        cpu_weights.load_in_place(model, items)
        # What vLLM's reload_weights does after new base weights: drop adapter state built on them.
        reset = getattr(self.model_runner, "reset_lora_state", None)
        if reset is not None:
            reset()
        return "in_place"
