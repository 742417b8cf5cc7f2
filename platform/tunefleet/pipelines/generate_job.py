"""`tunefleet generate`: a prompt file through a RolloutPool into a Parquet dataset, logged
to MLflow with lineage (the source run, the policy version). Self-play builds on this."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GenerateRequest:
    """What to generate: `model` (alias or HF dir) plus an optional LoRA `adapter` dir,
    prompts from `prompts` (JSONL/Parquet rows with `prompt_field`), `chat`: apply the
    model's chat template (prompt text = one user turn)."""

    model: str
    prompts: str
    out: str
    adapter: str | None = None
    prompt_field: str = "prompt"
    chat: bool = True
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = 0
    num_engines: int = 1
    cpus_per_engine: float = 1.0
    dtype: str = "float32"
    source_run_id: str | None = None
    experiment: str = "tunefleet-generate"
    tracking_uri: str | None = None


def run_generate(req: GenerateRequest):
    """Start a pool, (sync the adapter), generate, write `req.out`, log it; OfflineResult."""
    import ray

    from tunefleet.cluster import init_ray
    from tunefleet.config.rollout import RolloutConfig, engine_lora_rank
    from tunefleet.data.tokenize import user_prompt_ids
    from tunefleet.models.registry import load_tokenizer, resolve_model
    from tunefleet.rollout.client import create_pool
    from tunefleet.rollout.offline import generate_dataset, read_prompts
    from tunefleet.rollout.samples import Sampling
    from tunefleet.rollout.sync import WeightSync, adapter_from_dir
    from tunefleet.tracking import Tracker

    init_ray()
    model_dir = str(resolve_model(req.model))
    texts = read_prompts(req.prompts, req.prompt_field)
    prompts = user_prompt_ids(load_tokenizer(model_dir), texts) if req.chat else texts
    rank = adapter_from_dir(req.adapter).rank if req.adapter else 16
    cfg = RolloutConfig(num_engines=req.num_engines, resources_per_engine=req.cpus_per_engine, dtype=req.dtype,
                        enable_lora=req.adapter is not None, max_lora_rank=engine_lora_rank(rank),
                        name=f"generate-{int(time.time())}", seed=req.seed or 0)
    pool = create_pool(model_dir, cfg)
    tracker = Tracker.start(req.tracking_uri, req.experiment, Path(req.out).stem,
                            tags={"tunefleet.model": req.model, "tunefleet.adapter": req.adapter or ""})
    try:
        if req.adapter:
            WeightSync(pool).lora(req.adapter)
        sampling = Sampling(n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
                            seed=req.seed)
        result = generate_dataset(pool, prompts, req.out, sampling, model=req.model, tracker=tracker,
                                  source_run_id=req.source_run_id, name=Path(req.out).stem, texts=texts)
        tracker.log_artifact(req.out, "generated")
        tracker.finish("FINISHED")
        return result, tracker.run_id
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)

