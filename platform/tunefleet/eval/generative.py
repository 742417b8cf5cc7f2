"""Generative exact-match suites through the RolloutPool (vLLM): greedy by default, seeded.

Prompts are one chat user turn (the model's template, as RL prompts are built); built-in task
suites are scored by the task's own `verify`, GSM8K suites by the `math_answer` reward's
verdict (rewards/mathnorm.py `math_answer_correct`): one normalisation for RL and eval.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from tunefleet.data.tasks import get_task
from tunefleet.rewards.mathnorm import extract_answer, math_answer_correct


def judge(suite, completion: str, reference: str) -> tuple[bool, str | None]:
    """(correct, the extracted answer) for one completion of `suite`."""
    if suite.task is not None:
        task = get_task(suite.task)
        return task.verify(completion, reference), task.extract(completion)
    return math_answer_correct(completion, reference), extract_answer(completion)


def score_completions(suite, completions: list[str]) -> tuple[dict, list[dict]]:
    """(metrics {exact_match, n}, rows {id, input, reference, output, extracted, score})."""
    if len(completions) != len(suite.examples):
        raise ValueError(f"{suite.name}: {len(completions)} completions for {len(suite.examples)} examples")
    rows = []
    for ex, text in zip(suite.examples, completions):
        ok, found = judge(suite, text, ex.reference)
        rows.append({"id": ex.id, "input": ex.prompt, "reference": ex.reference, "output": text,
                     "extracted": found or "", "score": float(ok)})
    n = len(rows)
    return {"exact_match": sum(r["score"] for r in rows) / n, "n": n}, rows


@contextmanager
def eval_pool(model_dir: str, adapter: str | None, seed: int, dtype: str = "float32", cpus: float = 1.0):
    """A one-engine RolloutPool on `model_dir` (with `adapter` pushed as a LoRA), shut down after."""
    import ray

    from tunefleet.cluster import init_ray
    from tunefleet.config.rollout import RolloutConfig, engine_lora_rank
    from tunefleet.rollout.client import create_pool
    from tunefleet.rollout.sync import WeightSync, adapter_from_dir

    init_ray()
    rank = adapter_from_dir(adapter).rank if adapter else 16
    cfg = RolloutConfig(num_engines=1, resources_per_engine=cpus, dtype=dtype, enable_lora=adapter is not None,
                        max_lora_rank=engine_lora_rank(rank), name=f"eval-{int(time.time() * 1000)}", seed=seed)
    pool = create_pool(model_dir, cfg)
    try:
        if adapter:
            WeightSync(pool).lora(adapter)
        yield pool
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)


def generate(pool, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
             temperature: float = 0.0) -> list[str]:
    """One completion per prompt, in order (temperature 0: greedy)."""
    import ray

    from tunefleet.data.tokenize import user_prompt_ids
    from tunefleet.rollout.samples import Sampling

    sampling = Sampling(n=1, temperature=temperature, max_tokens=max_new_tokens, seed=seed)
    ref = pool.generate.remote(user_prompt_ids(tokenizer, prompts), sampling)
    # One request for the whole suite (the engines batch it as they like); say it is alive.
    t0, done = time.monotonic(), []
    while not done:
        done, _ = ray.wait([ref], timeout=30.0)
        if not done:
            print(f"[eval] generating {len(prompts)} completions: {time.monotonic() - t0:.0f} s so far", flush=True)
    rollouts = ray.get(ref)
    took = time.monotonic() - t0
    print(f"[eval] {len(prompts)} completions in {took:.0f} s ({len(prompts) / max(took, 1e-9):.2f}/s)", flush=True)
    return [r.samples[0].text for r in rollouts]


def run_generative(pool, tokenizer, suite, max_new_tokens: int, seed: int,
                   temperature: float = 0.0) -> tuple[dict, list[dict]]:
    """Generate for every example of `suite`, then score (see `score_completions`)."""
    completions = generate(pool, tokenizer, [ex.prompt for ex in suite.examples], max_new_tokens, seed, temperature)
    return score_completions(suite, completions)
