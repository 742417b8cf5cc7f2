"""`tunefleet sweep CAMPAIGN`: a method-sweep campaign on Ray Tune over Ray Train.

Each trial is a real tunefleet run (`run_train_job(cfg, trial=...)`, the same driver as
`tunefleet run`) inside a Tune function trainable: its TorchTrainer reports every eval
point to Tune (TuneReportCallback), so ASHA compares trials at budget points and stops the
ones that trail. The trainable asks for 0.1 CPU (0 is rejected); the Train workers get their
own through ScalingConfig (trainer.cpus_per_worker).

MLflow: a parent run (tag tunefleet.kind=campaign) in the base config's experiment; every
trial a child run (tag mlflow.parentRunId, tunefleet.trial_id, tunefleet.method). After the
fit the parent settles each child: a crashed trial's run is FAILED with tag tunefleet.error;
a stopped one is KILLED with tunefleet.stop_reason (asha, token_budget or wall_time). The
parent logs leaderboard.csv, leaderboard.md, plots (objective vs tokens, best per method, the
Pareto front of score vs compute) and report.html.

`--resume NAME` (sweep_state.py): the same trials are planned from the saved campaign, Tune
restores its experiment, and trials that had ended are reported again without training (Tune's
saved state can lag a trial that finished just before the driver died).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tunefleet.config import ConfigError
from tunefleet.config.campaign import Campaign, campaign_from_dict, campaign_to_dict
from tunefleet.pipelines import leaderboard as lb
from tunefleet.pipelines.leaderboard import Row
from tunefleet.pipelines.sweep_plan import (
    TrialSpec,
    from_optuna,
    objective,
    optuna_space,
    param_space,
    plan_trials,
    rungs,
    trial_resources,
    trial_spec,
)
from tunefleet.pipelines.sweep_state import (
    STATE_ARTIFACT,
    STATE_TAG,
    StopLog,
    TokenLog,
    load_state,
    save_state,
    state_dir,
)
from tunefleet.pipelines.trial import PARENT_TAG, Trial

TRIAL_CPU = 0.1  # the trial's driver only waits on its TorchTrainer (STACK.md: 0 is rejected)
ERROR_TAG_CHARS = 8000  # MLflow's tag limit (tracking/tracker.py MAX_TAG_VAL_LENGTH)


class SweepFailed(RuntimeError):
    """Every trial of the campaign failed."""


@dataclass
class SweepResult:
    parent_run_id: str | None
    metric: str
    mode: str
    rows: list[Row]
    artifacts: list[str]

    @property
    def best(self) -> Row | None:
        top = lb.ranked(self.rows, self.mode)
        return top[0] if top and top[0].objective is not None else None


@dataclass(frozen=True)
class _Job:
    """What every trial's trainable needs (shipped once by tune.with_parameters)."""

    trials: tuple[TrialSpec, ...]
    campaign: str
    parent_run_id: str
    campaign_spec: Campaign  # Optuna's trials are planned in the trainable, as they are proposed
    prefix: str  # the campaign's NAME: trial run names are <NAME>-tNNN-<method>
    tracking_uri: str | None
    extra: tuple[str, ...]
    settled: dict  # a resumed campaign's trials that had ended: index -> their last result


def _run_trial(config: dict, job: _Job) -> None:
    """Tune function trainable: one trial = one training job, a child run of the campaign.
    A restored trial runs the same config (same run name): its training resumes from its
    newest checkpoint, into the same child run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from tunefleet.pipelines.sweep_tune import index_from_dir
    from tunefleet.pipelines.train_job import run_train_job

    index = config["trial"] if "trial" in config else index_from_dir(tune.get_context().get_trial_dir())
    if index in job.settled:
        # Ended before the driver died, though Tune's saved state had not caught up: not rerun.
        tune.report({**job.settled[index], "final": True})
        return
    spec = _spec(job, index, config)
    tags = {"tunefleet.campaign": job.campaign, "tunefleet.trial_id": spec.trial_id, "tunefleet.method": spec.method,
            "tunefleet.kind": "trial", "tunefleet.values": json.dumps(spec.values, sort_keys=True)}
    trial = Trial((TuneReportCallback(),), job.parent_run_id, tags)
    if config.get("pbt"):  # PBT exploited a donor: a new Train run from its checkpoint, into this trial's MLflow run
        trial = _exploiting(trial, spec, config["pbt"], job.trials[index].config.run.name)
    run_train_job(spec.config, trial=trial)


def _spec(job: _Job, index: int, config: dict) -> TrialSpec:
    """The trial's spec: as planned; from its config when Optuna proposed it or PBT changed it
    (a PBT generation trains as `<first run name>-g<N>`: Ray Train resumes a run by name)."""
    if "values" in config:  # PBT: the method and values may be a donor's, perturbed
        gen = (config.get("pbt") or {}).get("generation")
        name = f"{job.trials[index].config.run.name}-g{gen}" if gen else None
        return trial_spec(job.campaign_spec, job.prefix, job.tracking_uri, job.extra, index, config["method"],
                          config["values"], name)
    if "trial" in config:
        return job.trials[index]
    method, values = from_optuna(job.campaign_spec, config)  # Optuna proposed it
    return trial_spec(job.campaign_spec, job.prefix, job.tracking_uri, job.extra, index, method, values)


def _exploiting(trial: Trial, spec: TrialSpec, pbt: dict, tracking_name: str) -> Trial:
    """The Trial of a PBT generation: it restores the donor's checkpoint (Tune's checkpoint of
    this trial, set by the exploit) into a new Train run, logged into the trial's own MLflow run."""
    from ray import tune

    ckpt = tune.get_checkpoint()
    tags = {**trial.tags, "tunefleet.pbt_generation": pbt["generation"],
            "tunefleet.pbt_last_exploit": json.dumps({**pbt, "method": spec.method, "values": spec.values})}
    return replace(trial, tags=tags, tracking_name=tracking_name, restore_from=ckpt)


def plan(campaign: Campaign, name: str, uri: str | None):
    """Trials (with the rungs' eval overrides and the objective pinned), objective, rungs, extra:
    everything a campaign checks before Ray starts (`tunefleet validate CAMPAIGN` too)."""
    first = plan_trials(campaign, name, uri)
    metric, mode = objective(campaign, first[0].config)
    if not first[0].config.tracking.enabled:
        raise ConfigError("tracking.enabled", "false; a campaign records its trials in MLflow: allowed: true")
    r = rungs(campaign, max(t.config.trainer.max_steps for t in first))
    c = campaign.campaign
    if c.scheduler.type == "pbt" and c.budget.max_concurrent < len(first):
        # PBT pauses running trials for waiting ones: each pause here is a Train run restart
        raise ConfigError("campaign.budget.max_concurrent", f"bad value {c.budget.max_concurrent}: PBT runs its "
                          f"{len(first)} trials together; allowed: >= {len(first)}")
    extra = (r.overrides if r else ()) + (f"eval.objective={json.dumps({'metric': metric, 'mode': mode})}",)
    if not first[0].config.run.storage:  # resolved here: a trial's processes may see another TUNEFLEET_HOME
        from tunefleet.pipelines.train_job import storage_path

        extra += (f"run.storage={json.dumps(str(Path(storage_path(first[0].config)).resolve()))}",)
    return plan_trials(campaign, name, uri, extra), metric, mode, r, extra


def _start_parent(campaign: Campaign, trials, name: str, uri: str | None, metric: str, mode: str):
    from tunefleet.tracking import Tracker, flatten_dict

    cfg = trials[0].config
    parent = Tracker.start(uri or cfg.tracking.uri, cfg.tracking.experiment, name, tags={
        "tunefleet.kind": "campaign", "tunefleet.campaign": campaign.campaign.name,
        "tunefleet.objective_metric": metric, "tunefleet.objective_mode": mode}, resume_tag=(STATE_TAG, name))
    parent.log_params(flatten_dict({"campaign": asdict(campaign.campaign),
                                    "space": {"common": campaign.space.common, "methods": campaign.space.methods}}))
    if campaign.campaign.search != "optuna":  # Optuna's trials are known only as it proposes them
        parent.log_dict({"trials": [{"trial_id": t.trial_id, "method": t.method, "values": t.values,
                                     "run_name": t.config.run.name} for t in trials]}, "campaign/trials.json")
    return parent


def run_sweep(campaign: Campaign | None, tracking_uri: str | None = None, ship_package: bool = False,
              resume: str | None = None) -> SweepResult:
    """Run every trial of `campaign` under its scheduler and budgets; log and return the
    leaderboard. `resume`: the NAME of a campaign whose driver died (`campaign` is then read
    from its state): Tune restores it, finished trials are kept, unfinished ones continue.
    Raises ConfigError before Ray starts, SweepFailed when no trial succeeded."""
    from tunefleet.cluster import init_ray
    from tunefleet.pipelines.sweep_tune import result_index
    from tunefleet.pipelines.train_job import storage_path

    state = load_state(resume, tracking_uri) if resume else None
    if state is not None:
        campaign, name, tracking_uri = campaign_from_dict(state["campaign"]), resume, state["tracking_uri"]
    else:
        name = f"{campaign.campaign.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trials, metric, mode, r, extra = plan(campaign, name, tracking_uri)
    init_ray(ship_package=ship_package)
    _check_fits(trials)
    parent = _start_parent(campaign, trials, name, tracking_uri, metric, mode)
    if state is None:
        state = _save_state(campaign, parent, name, tracking_uri, str(Path(storage_path(trials[0].config)) / name))
    path = state["experiment_path"]
    b = campaign.campaign.budget
    _announce(campaign, trials, name, metric, mode, r, parent.run_id, resume)
    # A trial's checkpoint reports carry no objective; Tune's strict check would fail them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    stops, tokens = StopLog(state_dir(name)), TokenLog(state_dir(name))
    settled = _settled(parent, metric, stops) if resume else {}
    job = _Job(tuple(trials), campaign.campaign.name, parent.run_id, campaign, name, tracking_uri, extra, settled)
    started = time.monotonic()
    try:
        tuner = _tuner(campaign, job, r, metric, mode, path, stops, tokens, resume)
        grid = tuner.fit()
        out_of_time = b.wall_time_s is not None and time.monotonic() - started >= 0.98 * b.wall_time_s
        budget_hit = b.train_tokens is not None and tokens.total() >= b.train_tokens
        results = {i: res for res in grid if (i := result_index(res)) is not None}
        if campaign.campaign.search == "optuna" or campaign.campaign.scheduler.type == "pbt":
            trials = _proposed(job, results)
        rows = _settle(parent, trials, results, metric, stops.load(),
                       "token_budget" if budget_hit else "wall_time" if out_of_time else "stopped")
    except BaseException:
        parent.finish("FAILED")
        raise
    return _finish(parent, rows, metric, mode)


def _save_state(campaign: Campaign, parent, name: str, tracking_uri: str | None, path: str) -> dict:
    """What `--resume NAME` needs, on this machine and in the parent run (sweep_state.py)."""
    state = {"name": name, "tracking_uri": tracking_uri, "parent_run_id": parent.run_id, "experiment_path": path,
             "campaign": campaign_to_dict(campaign)}
    parent.log_text(json.dumps(state, indent=1, sort_keys=True), STATE_ARTIFACT)
    save_state(name, state)
    return state


def _announce(campaign: Campaign, trials, name: str, metric: str, mode: str, r, run_id: str, resume) -> None:
    c = campaign.campaign
    where = f"rungs {r.milestones()} {r.time_attr}" if r else "no early stopping"
    count = c.num_samples if c.search == "optuna" else len(trials)
    methods = ", ".join(sorted({t.method for t in trials}))
    print(f"[sweep] campaign {name}: {count} trials ({methods}), objective {metric} ({mode}), "
          f"{c.scheduler.type}: {where}; {c.budget.max_concurrent} at a time; MLflow run {run_id}"
          f"{'; resumed' if resume else ''}", flush=True)


def _settled(parent, metric: str, stops: StopLog) -> dict[int, dict]:
    """Trials of a resumed campaign that had ended when its driver died: finished (their child
    run FINISHED) or stopped by the scheduler (the StopLog). Index -> the result to report."""
    out = {i: {k: v for k, v in r.items() if k != "reason"} for i, r in stops.load().items()}
    for trial_id, child in _children(parent).items():
        if trial_id and child.info.status == "FINISHED":
            m = child.data.metrics
            out[int(trial_id[1:])] = {k: m[k] for k in (metric, "train_tokens", "step") if k in m}
    return out


def _check_fits(trials: list[TrialSpec]) -> None:
    """A trial that needs more CPUs than the cluster has would wait forever: on a cluster we
    started, fail now (naming the trial); on a given one (it may autoscale), say so."""
    import ray

    from tunefleet import cluster

    have = ray.cluster_resources().get("CPU", 0.0)
    for t in trials:
        need = TRIAL_CPU + trial_resources(t.config)[0]
        if need <= have + 1e-9:
            continue
        msg = (f"trial {t.trial_id} ({t.method}) needs {need:g} CPUs (its driver {TRIAL_CPU}, Train workers and "
               f"rollout engines), the cluster has {have:g}")
        if cluster.started_locally():
            raise ConfigError("campaign.resources", f"{msg}; allowed: at most {have - TRIAL_CPU:g} CPUs per trial "
                              "(campaign.resources.cpus, rollout.resources_per_engine)")
        print(f"[sweep] warning: {msg}: it waits until the cluster grows", flush=True)


def _tuner(campaign: Campaign, job: _Job, r, metric: str, mode: str, path: str, stops, tokens, resume):
    """Tune's Tuner for the campaign, or Tune's own restore of it (`resume`)."""
    from ray import tune

    from tunefleet.pipelines.sweep_tune import StatusLine, TokenBudget, optuna_search

    trainable = tune.with_resources(tune.with_parameters(_run_trial, job=job), {"cpu": TRIAL_CPU})
    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError("--resume", f"campaign {job.prefix}: no Tune experiment state under {path}")
        # Finished and stopped trials stay as they are; unfinished ones continue; failed ones stay failed.
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    c = campaign.campaign
    b = c.budget
    optuna = c.search == "optuna"
    search = None
    if optuna:
        search = optuna_search(optuna_space(campaign), metric, mode, c.seed)
    status = StatusLine(metric, mode, c.name, c.num_samples if optuna else len(job.trials), b.wall_time_s,
                        b.train_tokens, tokens, stops)
    pbt = c.scheduler.type == "pbt"
    return tune.Tuner(
        trainable, param_space={} if optuna else param_space(list(job.trials), pbt),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=_scheduler(campaign, job, r, stops),
                                    search_alg=search,
                                    num_samples=c.num_samples if optuna else 1,
                                    max_concurrent_trials=b.max_concurrent, time_budget_s=b.wall_time_s),
        run_config=tune.RunConfig(name=job.prefix, storage_path=str(Path(path).parent), callbacks=[status],
                                  stop=TokenBudget(b.train_tokens, tokens), verbose=1))


def _scheduler(campaign: Campaign, job: _Job, r, stops):
    from tunefleet.pipelines.sweep_plan import pbt_mutations
    from tunefleet.pipelines.sweep_tune import scheduler
    from tunefleet.storage import ray_storage

    s = campaign.campaign.scheduler
    if s.type != "pbt":
        return scheduler(r, stops)
    pbt = {"hyperparam_mutations": pbt_mutations(campaign), "quantile_fraction": s.quantile_fraction,
           "resample_probability": s.resample_probability}
    return scheduler(r, stops, pbt, ray_storage(job.trials[0].config.run.storage)[1])


def _proposed(job: _Job, results: dict) -> list[TrialSpec]:
    """The trials as they ended (for the leaderboard), from their Tune configs: what Optuna
    proposed, or what PBT made of them."""
    return [_spec(job, index, results[index].config) for index in sorted(results)]


def _finish(parent, rows: list[Row], metric: str, mode: str) -> SweepResult:
    from tunefleet.tracking.plots import log_plot

    parent.log_text(lb.to_csv(rows, mode), "leaderboard.csv")
    parent.log_text(lb.to_markdown(rows, metric, mode), "leaderboard.md")
    from tunefleet.pipelines.report import pareto_plot, report_html

    images = [log_plot(parent, "objective_vs_tokens.png", lambda out: lb.objective_vs_tokens(rows, metric, mode, out)),
              log_plot(parent, "best_per_method.png", lambda out: lb.best_per_method_plot(rows, metric, mode, out)),
              log_plot(parent, "pareto.png", lambda out: pareto_plot(rows, metric, mode, out))]
    parent.log_text(report_html(f"campaign {parent.run_id}", rows, metric, mode, images), "report.html")
    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "stopped", "failed", "not run")}
    parent.log_metrics({f"campaign/trials_{s.replace(' ', '_')}": float(n) for s, n in counts.items()}, step=0)
    result = SweepResult(parent.run_id, metric, mode, rows, [])
    cost = lb.compute_to_best(rows, mode)
    if cost is not None:  # what reaching the best score cost, against what the whole campaign cost
        parent.log_metrics({f"campaign/{k}": v for k, v in cost.items()}, step=0)
        print(f"[sweep] compute: {cost['cpu_seconds_total']:.0f} CPU-s in all, {cost['cpu_seconds_to_best']:.0f} "
              f"CPU-s until the best score was first reached", flush=True)
    if result.best is not None:
        parent.log_metrics({"campaign/best_objective": result.best.objective}, step=0)
        parent.set_tags({"tunefleet.best_run_id": result.best.run_id or "",
                         "tunefleet.best_method": result.best.method})
    print(lb.to_text(rows, metric, mode), flush=True)
    print(f"[sweep] {', '.join(f'{n} {s}' for s, n in counts.items() if n)}; MLflow run {parent.run_id}; "
          f"report: {_artifact_uri(parent)}/report.html", flush=True)
    failed = [r for r in rows if r.status == "failed"]
    if failed and len(failed) == len(rows):
        parent.finish("FAILED")
        raise SweepFailed(f"every trial failed; the first ({failed[0].trial_id}): {failed[0].error}")
    parent.finish("FINISHED")
    result.artifacts = parent.list_artifacts()
    return result


def _artifact_uri(parent) -> str:
    try:
        return parent.client.get_run(parent.run_id).info.artifact_uri
    except Exception:  # noqa: BLE001 - a tracking outage must not hide the leaderboard
        return f"runs:/{parent.run_id}"


def _children(parent) -> dict:
    runs = parent.client.search_runs([parent.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.run_id}'",
                                     max_results=10000)
    return {r.data.tags.get("tunefleet.trial_id"): r for r in runs}


def _curve(client, run_id: str, metric: str, until: dict | None) -> tuple:
    """[(train_tokens, objective)] at each eval point of a child run, by step; for a stopped
    trial only up to the point it was stopped on (`until`: that result)."""
    tokens = {m.step: m.value for m in client.get_metric_history(run_id, "train_tokens")}
    values = {m.step: m.value for m in client.get_metric_history(run_id, metric)}
    last = until.get("step", math.inf) if until else math.inf
    return tuple((tokens[s], values[s]) for s in sorted(values) if s in tokens and s <= last)


def _settle(parent, trials: list[TrialSpec], results: dict, metric: str, stopped: dict,
            other_stop: str) -> list[Row]:
    """Each trial's final state in MLflow (FAILED / KILLED children), and its leaderboard row.
    `stopped`: trial index -> the result a scheduler stopped it on, with its "reason" (StopLog);
    `other_stop`: the stop reason of a trial Tune ended otherwise (a budget)."""
    client, children, rows = parent.client, _children(parent), []
    for spec in trials:
        res, child = results.get(spec.index), children.get(spec.trial_id)
        error = None if res is None or res.error is None else str(res.error)
        seconds = (res.metrics or {}).get("time_total_s") if res is not None else None
        at = stopped.get(spec.index)
        if error is not None:
            status = "failed"
            if child is None:  # it failed before its run started (data, model): give it one
                child = _failed_child(parent, spec)
            client.set_tag(child.info.run_id, "tunefleet.error", error[-ERROR_TAG_CHARS:])
            if child.info.status != "FAILED":
                client.set_terminated(child.info.run_id, "FAILED")
        elif child is None:
            rows.append(Row(spec.trial_id, spec.method, spec.values, None, None, None, "not run"))
            continue
        elif child.info.status == "FINISHED":
            status = "finished"
        else:  # Tune stopped its driver mid-run: the run never finished itself
            status = "stopped"
            # Timed like a finished trial, from its run's start: until the result it was stopped on
            # (Tune's time_total_s also counts the trial's start-up, which a finished one's does not).
            if at and at.get("timestamp") and child.info.start_time:
                seconds = max(0.0, at["timestamp"] - child.info.start_time / 1000)
            client.set_tag(child.info.run_id, "tunefleet.stop_reason", at.get("reason", "asha") if at else other_stop)
            end = child.info.start_time + int(1000 * seconds) if seconds else None
            client.set_terminated(child.info.run_id, "KILLED", end_time=end)
        if status != "stopped" and child.info.end_time:
            seconds = (child.info.end_time - child.info.start_time) / 1000
        # A stopped trial's score and tokens are those it was stopped on (its workers may
        # have logged a little more before they were killed).
        m = at if status == "stopped" and at else child.data.metrics
        cpus, gpus = trial_resources(spec.config)
        start = child.info.start_time / 1000 if child.info.start_time else None
        rows.append(Row(spec.trial_id, spec.method, spec.values, m.get(metric), m.get("train_tokens"), seconds,
                        status, child.info.run_id, _curve(client, child.info.run_id, metric,
                                                          at if status == "stopped" else None),
                        (error or "")[-2000:], cpus, gpus, start,
                        start + seconds if start is not None and seconds is not None else None))
    return rows


def _failed_child(parent, spec: TrialSpec):
    run = parent.client.create_run(parent.experiment_id, run_name=spec.config.run.name, tags={
        PARENT_TAG: parent.run_id, "tunefleet.trial_id": spec.trial_id, "tunefleet.method": spec.method,
        "tunefleet.kind": "trial", "tunefleet.run_name": spec.config.run.name})
    return parent.client.get_run(run.info.run_id)
