"""`tunefleet eval TARGET SUITE... [--lm-eval TASK_YAML]`: the one evaluation entry point.

Order: parse every suite and read its data (bad input fails here, naming `file:line`),
resolve the TARGET, then open an MLflow run in experiment `tunefleet-eval` (driver side only,
through tracking.Tracker), run the generative suites in one RolloutPool, the log-likelihood
suites (MC, perplexity) on one HF model, the harness tasks through lm-eval, and log for each
suite `eval/<suite>/<metric>`, a per-example Parquet artifact `eval/<suite>.parquet`
(suite, id, input, reference, output, score, extra JSON) and its data as an MLflow dataset
input with context `eval`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunefleet.eval.suites import Suite, SuiteError, parse_suites

EXPERIMENT = "tunefleet-eval"
_BASE_COLUMNS = ("id", "input", "reference", "output", "score")


@dataclass(frozen=True)
class EvalRequest:
    target: str
    suites: tuple[str, ...] = ()
    lm_eval: tuple[str, ...] = ()  # harness task YAMLs
    limit: int | None = None
    seed: int = 0
    max_new_tokens: int = 256
    batch_size: int = 8
    temperature: float = 0.0  # greedy
    base: str | None = None  # base model of an adapter TARGET
    dtype: str = "float32"
    tracking_uri: str | None = None
    experiment: str = EXPERIMENT


@dataclass
class EvalOutcome:
    """`metrics`: suite -> {metric: value}; `rows`: suite -> per-example rows."""

    run_id: str | None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: dict[str, list[dict]] = field(default_factory=dict)

    def flat_metrics(self) -> dict[str, float]:
        return {f"eval/{s}/{k}": v for s, m in self.metrics.items() for k, v in m.items()}

    def suite_lines(self) -> list[str]:
        return [f"{s}: " + " ".join(f"{k}={_fmt(v)}" for k, v in m.items()) for s, m in self.metrics.items()]

    def summary_line(self) -> str:
        return json.dumps({"run_id": self.run_id, "metrics": self.flat_metrics()}, sort_keys=True)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) >= 1 else f"{v:.4f}"


def prepare(req: EvalRequest):
    """(suites, harness tasks): everything checked before a model or MLflow is touched."""
    from tunefleet.eval.lm_eval_compat import read_task

    if not req.suites and not req.lm_eval:
        raise SuiteError("give at least one SUITE or --lm-eval TASK_YAML")
    return parse_suites(list(req.suites), req.limit, req.seed), [read_task(p) for p in req.lm_eval]


def write_rows(suite: str, rows: list[dict], out: Path) -> Path:
    """The per-example Parquet file of one suite (extra fields go to an `extra` JSON column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "suite": [suite] * len(rows),
        **{c: [str(r[c]) for r in rows] for c in _BASE_COLUMNS[:4]},
        "score": pa.array([float(r["score"]) for r in rows], pa.float64()),
        "extra": [json.dumps({k: v for k, v in r.items() if k not in _BASE_COLUMNS}, sort_keys=True) for r in rows],
    })
    pq.write_table(table, out)
    return out


def _run_generative(req: EvalRequest, target, suites: list[Suite], tokenizer) -> dict:
    from tunefleet.eval.generative import eval_pool, run_generative

    with eval_pool(target.model_dir, target.adapter, req.seed, req.dtype) as pool:
        return {s.name: run_generative(pool, tokenizer, s, req.max_new_tokens, req.seed, req.temperature)
                for s in suites}


def _run_loglikelihood(req: EvalRequest, target, suites: list[Suite], tokenizer) -> dict:
    import torch

    from tunefleet.eval.exact_match import load_trained
    from tunefleet.eval.mc import run_mc
    from tunefleet.eval.perplexity import run_ppl

    torch.manual_seed(req.seed)
    model = load_trained(target.model_dir, target.adapter, target.adapter is not None, req.dtype)
    run = {"mc": run_mc, "ppl": run_ppl}
    return {s.name: run[s.kind](model, tokenizer, s, req.batch_size) for s in suites}


def log_suite(tracker, name: str, metrics: dict, rows: list[dict], tmp: Path) -> None:
    """`eval/<name>/<metric>` at step 0 and the suite's per-example Parquet under `eval/`."""
    if tracker is None:
        return
    tracker.log_metrics({f"eval/{name}/{k}": float(v) for k, v in metrics.items()}, step=0)
    tracker.log_artifact(write_rows(name, rows, tmp / f"{name}.parquet"), "eval")


def log_suite_data(tracker, suites: list[Suite], tasks=(), prefix: str = "") -> None:
    """Each suite's data (and harness task's) as an MLflow dataset input with context `eval`."""
    for s in suites:
        source = s.path or f"tunefleet:{s.task}?split=eval&level={s.info.get('level')}&seed={s.info.get('seed')}"
        tracker.log_dataset(f"{prefix}{s.name}", s.digest, len(s.examples), source, context="eval")
    for t in tasks:
        tracker.log_dataset(t.name, t.digest, t.rows, t.path, context="eval")


def _start_tracker(req: EvalRequest, target, suites, tasks):
    from tunefleet.tracking import Tracker

    tracker = Tracker.start(req.tracking_uri, req.experiment, f"eval-{Path(target.spec).name}", tags=target.tags())
    tracker.log_params({"eval.suites": ",".join(req.suites), "eval.lm_eval": ",".join(req.lm_eval),
                        "eval.limit": req.limit, "eval.seed": req.seed, "eval.max_new_tokens": req.max_new_tokens,
                        "eval.temperature": req.temperature, "eval.dtype": req.dtype})
    log_suite_data(tracker, suites, tasks)
    return tracker


def run_eval(req: EvalRequest, track: bool = True) -> EvalOutcome:
    """Run every suite of `req` on its target; see the module doc. `track=False`: no MLflow."""
    from tunefleet.eval.targets import resolve_target
    from tunefleet.models.registry import load_tokenizer

    suites, tasks = prepare(req)
    target = resolve_target(req.target, req.base, req.tracking_uri)
    tokenizer = load_tokenizer(target.model_dir)
    tracker = _start_tracker(req, target, suites, tasks) if track else None
    outcome = EvalOutcome(tracker.run_id if tracker else None)
    try:
        with tempfile.TemporaryDirectory(prefix="tunefleet-eval-") as tmp:
            results = run_suites(req, target, suites, tasks, tokenizer)
            for s in [*suites, *tasks]:  # report in the order given
                metrics, rows = results[s.name]
                outcome.metrics[s.name], outcome.rows[s.name] = metrics, rows
                log_suite(tracker, s.name, metrics, rows, Path(tmp))
            if tracker:
                tracker.flush()  # artifacts are read from tmp: deliver before it goes
    except BaseException:
        if tracker:
            tracker.finish("FAILED")
        raise
    if tracker:
        tracker.finish("FINISHED")
    return outcome


def _run_tasks(req: EvalRequest, target, tasks) -> dict:
    from tunefleet.eval.lm_eval_compat import run_harness

    return {t.name: run_harness(t, target.model_dir, target.adapter, req.limit, req.seed, req.batch_size, req.dtype)
            for t in tasks}


def run_suites(req: EvalRequest, target, suites: list[Suite], tasks, tokenizer) -> dict:
    """suite name -> (metrics, rows): generative suites share one pool, log-likelihood ones one model."""
    results = {}
    gen = [s for s in suites if s.kind == "generative"]
    if gen:
        results.update(_run_generative(req, target, gen, tokenizer))
    ll = [s for s in suites if s.kind in ("mc", "ppl")]
    if ll:
        results.update(_run_loglikelihood(req, target, ll, tokenizer))
    results.update(_run_tasks(req, target, tasks))
    return results
