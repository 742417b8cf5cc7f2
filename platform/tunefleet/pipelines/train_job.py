"""The driver of a training job: data, tracking, evaluation around one Ray Train fit.

Only this process talks to MLflow: run-level records (params, datasets, artifacts,
evaluation) and rank 0's step metrics, which rank 0 sends here (tracking/relay.py).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from tunefleet import storage
from tunefleet.config import Config, dump_yaml, to_dict
from tunefleet.tracking.relay import relay_records
from tunefleet.train.control import control_name, start_control


@dataclass
class JobResult:
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    objective: tuple[str, str] | None = None  # (metric, "max" | "min") of the run's eval plan

    def summary_line(self) -> str:
        return json.dumps({"run_id": self.run_id, "metrics": self.metrics, "artifacts": self.artifacts})


def _workers(cfg: Config) -> str:
    t = cfg.trainer
    return f"{t.min_workers}-{t.max_workers} (elastic)" if t.elastic else str(t.max_workers)


def run_name(cfg: Config) -> str:
    """The run's identity: rerunning with the same `run.name` resumes it."""
    return cfg.run.name or f"{cfg.algorithm.type}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def storage_path(cfg: Config) -> str:
    from tunefleet.paths import tunefleet_home

    return cfg.run.storage or str(tunefleet_home() / "runs")


class _NoTracker:
    """Stands in when tracking.enabled is false, so the driver code has no branches."""

    run_id = None
    uri = None

    def __getattr__(self, name):
        return lambda *a, **k: None

    def list_artifacts(self):
        return []


def _start_tracker(cfg: Config, name: str, extra_tags: dict | None = None):
    if not cfg.tracking.enabled:
        return _NoTracker()
    from tunefleet.tracking import Tracker, flatten_dict

    tags = {"tunefleet.run_name": name, "tunefleet.algorithm": cfg.algorithm.type, "tunefleet.model": cfg.model.name,
            **(extra_tags or {})}
    try:
        tracker = Tracker.start(cfg.tracking.uri, cfg.tracking.experiment, name, tags=tags,
                                resume_tag=("tunefleet.run_name", name))
    except Exception as err:  # a tracking outage must never stop training
        warnings.warn(f"MLflow unreachable at start ({err}); this run trains without tracking", stacklevel=2)
        return _NoTracker()
    tracker.log_params(flatten_dict(to_dict(cfg)))
    tracker.log_text(dump_yaml(cfg), "config.yaml")
    return tracker


def _task_eval(cfg: Config, model_dir: str, tokenizer, problems):
    from tunefleet.data import get_task
    from tunefleet.eval.exact_match import load_trained, task_accuracy

    def run(export_dir: str | None, label: str):
        model = load_trained(model_dir, export_dir, cfg.model.lora is not None, cfg.model.dtype)
        res = task_accuracy(model, tokenizer, get_task(cfg.data.task), problems, cfg.eval.max_new_tokens,
                            cfg.eval.batch_size, label=label)
        return {"accuracy": res.accuracy}, {"accuracy": res.accuracy, "samples": res.samples}

    return run


def _preference_eval(cfg: Config, model_dir: str, tokenizer):
    from tunefleet.data.prepare import read_tokenized
    from tunefleet.eval.preference import load_scorer, pair_stats, preference_metrics

    pairs, _, _ = read_tokenized(cfg.data.eval_path, "pairs", cfg.data, tokenizer)
    base: dict[str, tuple] = {}

    def run(export_dir: str | None, label: str):
        scorer = load_scorer(model_dir, export_dir, cfg.model.lora is not None, cfg.algorithm.VALUE_HEAD,
                             cfg.model.dtype)
        stats = pair_stats(scorer, pairs, tokenizer.pad_token_id, cfg.reference.batch_size, label)
        if export_dir is None and not cfg.algorithm.VALUE_HEAD:
            base["stats"] = stats  # the starting model: the reference of implicit rewards
        metrics = preference_metrics(*stats, base.get("stats") if export_dir else None)
        return metrics, {**metrics, "pairs": len(pairs)}

    return run


def _evaluator(cfg: Config, model_dir: str, tokenizer, data):
    """fn(export_dir | None, label) -> (metrics, details), or None."""
    if data.eval_problems:
        return _task_eval(cfg, model_dir, tokenizer, data.eval_problems)
    if cfg.data.eval_path and cfg.algorithm.BATCH == "pairs":
        return _preference_eval(cfg, model_dir, tokenizer)
    return None


def _evaluate(evaluator, export_dir: str | None, label: str, tracker, step: int) -> dict[str, float]:
    if evaluator is None:
        return {}
    metrics, details = evaluator(export_dir, label)
    print(f"[{label}] " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)
    named = {f"eval/{k}_{label}": v for k, v in metrics.items()}
    tracker.log_metrics(named, step=step)
    tracker.log_dict(details, f"eval/{label}.json")
    return named


def _precompute(cfg: Config, model_dir: str, tokenizer, data) -> None:
    if cfg.reference_mode != "precompute":
        return
    from tunefleet.paths import tunefleet_home
    from tunefleet.train.reference import precompute_reference
    from tunefleet.train.step import autocast_bf16

    path = precompute_reference(data.rows, model_dir, tokenizer.pad_token_id, data.info["train"]["digest"],
                                cfg.data.max_length, cfg.model.dtype, cfg.reference.batch_size,
                                tunefleet_home() / "refcache", bf16=autocast_bf16(cfg.trainer.bf16, "cpu"))
    print(f"[reference] log-probs cached at {path}", flush=True)


class _StopState:
    reason: str | None = None


@contextmanager
def stop_on_sigterm(control):
    """While training: SIGTERM (`ray job stop`, a preempted pod) asks the workers to finish
    the current step, checkpoint and return, instead of killing them mid-step."""
    state = _StopState()

    def handler(signum, frame):
        state.reason = signal.Signals(signum).name
        print(f"[driver] {state.reason}: stopping after the current step (checkpoint, then exit)", flush=True)
        control.request_stop.remote(state.reason)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, handler) if main else None
    try:
        yield state
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _stopped(tracker, metrics: dict, ckpt_path: str | None, reason: str) -> JobResult:
    """A run stopped on request: no final evaluation or export; the MLflow run is KILLED and
    `tunefleet run --resume RUN_ID` continues it from `ckpt_path`."""
    tracker.set_tags({"tunefleet.stopped": reason})
    tracker.finish("KILLED")
    print(f"[driver] stopped at step {int(metrics.get('step', 0))}; resume with: tunefleet run --resume "
          f"{tracker.run_id}", flush=True)
    return JobResult(tracker.run_id, {**metrics, "stopped": 1.0}, tracker.list_artifacts(), ckpt_path)


def _pool_if_rl(rl: bool, cfg: Config, model_dir: str, name: str, tracker):
    """Online RL samples from a RolloutPool that lives for the fit; other methods need none."""
    if not rl:
        return nullcontext({})
    from tunefleet.pipelines.rl_pool import rollout_pool

    return rollout_pool(cfg, model_dir, name, tracker)


def run_train_job(cfg: Config, ship_package: bool = False, trial=None) -> JobResult:
    """Prepare data, start tracking, evaluate the base model, fit, evaluate, log, return.
    `trial`: a pipelines/trial.py Trial when this job is one trial of a campaign."""
    import ray

    from tunefleet.cluster import init_ray
    from tunefleet.data.prepare import prepare_data
    from tunefleet.models.registry import load_tokenizer, resolve_model
    from tunefleet.pipelines.eval_steps import EvalFailed, build_plan, finish_eval, log_plan
    from tunefleet.train.trainer import build_trainer, ray_train_env

    if cfg.algorithm.BATCH == "rl":  # before Ray, data and the base model's eval
        from tunefleet.pipelines.rl_pool import check_rewards

        check_rewards(cfg)
    init_ray(ship_package=ship_package)
    model_dir = str(resolve_model(cfg.model.name))
    tokenizer = load_tokenizer(model_dir)
    rl = cfg.algorithm.BATCH == "rl"
    max_prompt = cfg.rollout.max_model_len - cfg.algorithm.max_new_tokens if rl else None
    data = prepare_data(cfg.data, cfg.algorithm.BATCH, tokenizer, max_prompt)
    plan = build_plan(cfg, tokenizer, model_dir, max_prompt)
    _precompute(cfg, model_dir, tokenizer, data)
    name = run_name(cfg)
    tracker = _start_tracker(cfg, (trial and trial.tracking_name) or name, trial.run_tags() if trial else None)
    log_plan(tracker, plan)
    for ds_name, info in data.info.items():
        tracker.log_dataset(ds_name, info["digest"], info["rows"], info["source"],
                            tags=trial.dataset_tags.get(ds_name) if trial else None)
    if data.bad_rows:
        tracker.log_text("\n".join(str(b) for b in data.bad_rows), "data/bad_rows.txt")
        tracker.log_metrics({"data/bad_rows": len(data.bad_rows)}, step=0)
    metrics: dict[str, float] = {}
    evaluator = _evaluator(cfg, model_dir, tokenizer, data)
    if cfg.eval.before:
        metrics.update(_evaluate(evaluator, None, "before", tracker, 0))
    loop_config = {"config": to_dict(cfg), "model_dir": model_dir, "data_ref": ray.put(data.rows),
                   "pad_id": tokenizer.pad_token_id, "run_id": tracker.run_id}
    print(f"[driver] run {name}: {len(data.rows)} training rows, {_workers(cfg)} worker(s), "
          f"{cfg.trainer.max_steps} steps; storage {storage_path(cfg)}/{name}", flush=True)
    control = start_control(name)
    loop_config["control_name"] = control_name(name)
    loop_config["report_evals"] = bool(trial and trial.report_evals)
    if trial and trial.restore_from is not None:  # Ray Train v2 has no resume_from_checkpoint: the loop loads it
        loop_config["start_from"] = (trial.restore_from.path, trial.restore_from.filesystem)
    # Local paths or URIs (s3://): rank 0 writes these wherever it runs, the driver reads them.
    run_dir = storage.join(storage_path(cfg), name)
    eval_dir = storage.join(run_dir, "eval")
    if plan is not None:
        loop_config.update(eval_ref=ray.put(plan), eval_dir=eval_dir)
    sample_log = storage.join(run_dir, "sample_ids.jsonl")
    if cfg.trainer.log_sample_ids:
        storage.makedirs(run_dir)
        loop_config["sample_log"] = sample_log
    try:
        with _pool_if_rl(rl, cfg, model_dir, name, tracker) as extra, stop_on_sigterm(control) as stop, \
                ray_train_env(cfg.trainer.elastic), relay_records(tracker, control):
            loop_config.update(extra)
            callbacks = list(trial.callbacks) if trial else None
            result = build_trainer(cfg, loop_config, name, storage_path(cfg), callbacks).fit()
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        ray.kill(control)
    ckpt_path = storage.checkpoint_uri(result.checkpoint)
    metrics.update({k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))})
    if cfg.trainer.log_sample_ids and storage.is_file(sample_log):
        with storage.local_file(sample_log) as local:
            tracker.log_artifact(str(local), "data")
    if stop.reason is not None:
        return _stopped(tracker, metrics, ckpt_path, stop.reason)
    # On remote storage the export and the eval points are downloaded for the block.
    with storage.local_subdir(result.checkpoint, "export") as export_dir, storage.local_dir(eval_dir) as evals:
        if cfg.eval.after and export_dir:
            metrics.update(_evaluate(evaluator, str(export_dir), "after", tracker, cfg.trainer.max_steps))
        try:
            metrics.update(finish_eval(tracker, cfg, plan, evals, model_dir))
        except EvalFailed:
            tracker.finish("FAILED")
            raise
        if export_dir:
            tracker.log_artifact(str(export_dir), "adapter" if cfg.model.lora is not None else "model")
    if rl and cfg.tracking.enabled and tracker.run_id:
        from tunefleet.tracking.plots import log_reward_curve

        log_reward_curve(tracker, metrics)
    tracker.finish("FINISHED")
    return JobResult(tracker.run_id, metrics, tracker.list_artifacts(), ckpt_path, plan.objective if plan else None)
