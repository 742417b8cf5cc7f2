"""`tunefleet sweep CAMPAIGN`: a method-sweep campaign on Ray Tune over Ray Train.

Each trial is a real tunefleet run (`run_train_job(cfg, trial=...)`, the same driver as
`tunefleet run`) inside a Tune function trainable: its TorchTrainer reports every eval
point to Tune (TuneReportCallback), so ASHA compares trials at budget points and stops the
ones that trail. The trainable asks for 0.1 CPU (0 is rejected); the Train workers get their
own through ScalingConfig (trainer.cpus_per_worker).

MLflow: a parent run (tag tunefleet.kind=campaign) in the base config's experiment; every
trial a child run (tag mlflow.parentRunId, tunefleet.trial_id, tunefleet.method). After the
fit the parent settles each child: a crashed trial's run is FAILED with tag tunefleet.error;
a stopped one is KILLED with tunefleet.stop_reason (asha, or wall_time). The parent logs
leaderboard.csv, leaderboard.md, plots/objective_vs_tokens.png and plots/best_per_method.png.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

from tunefleet.config import ConfigError
from tunefleet.config.campaign import Campaign
from tunefleet.pipelines import leaderboard as lb
from tunefleet.pipelines.leaderboard import Row
from tunefleet.pipelines.sweep_plan import (
    Rungs,
    TrialSpec,
    objective,
    param_space,
    plan_trials,
    rungs,
    trial_resources,
)
from tunefleet.pipelines.trial import PARENT_TAG, Trial

TRIAL_CPU = 0.1  # the trial's driver only waits on its TorchTrainer (STACK.md: 0 is rejected)
STATUS_EVERY_S = 30.0
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


def _run_trial(config: dict, job: _Job) -> None:
    """Tune function trainable: one trial = one training job, a child run of the campaign."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from tunefleet.pipelines.train_job import run_train_job

    spec = job.trials[config["trial"]]
    tags = {"tunefleet.campaign": job.campaign, "tunefleet.trial_id": spec.trial_id, "tunefleet.method": spec.method,
            "tunefleet.kind": "trial"}
    run_train_job(spec.config, trial=Trial((TuneReportCallback(),), job.parent_run_id, tags))


def _scheduler(r: Rungs | None):
    """ASHA over `r` (FIFO without). A trial's last eval point is no rung: stopping it there
    would kill its driver while it logs the final evaluation, and it has finished anyway."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if r is None:
        return FIFOScheduler()

    class FinalPointASHA(ASHAScheduler):
        """Also remembers what it stopped: trial index -> the result it stopped it on (Tune
        kills the trial's driver a moment later, while its workers may still log a step or two)."""

        def on_trial_result(self, tune_controller, trial, result):
            if result.get("final"):
                return self.CONTINUE
            action = super().on_trial_result(tune_controller, trial, result)
            if action == self.STOP:
                self.stopped[trial.config["trial"]] = dict(result)
            return action

    # stop_last_trials=False: max_t places the rungs; a trial past it still runs to its last step
    asha = FinalPointASHA(time_attr=r.time_attr, max_t=r.max_t, grace_period=r.grace_period,
                          reduction_factor=r.reduction_factor, stop_last_trials=False)
    asha.stopped = {}
    return asha


def _status_callback(metric: str, mode: str):
    """A one-line status every STATUS_EVERY_S: trials by state and the best score so far."""
    from ray.tune import Callback

    class StatusLine(Callback):
        def __init__(self):
            self.last, self.best = 0.0, None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            v = result.get(metric)
            if v is not None and (self.best is None or (v > self.best[0] if mode == "max" else v < self.best[0])):
                self.best = (v, f"t{trial.config.get('trial', 0):03d}")

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self.last < STATUS_EVERY_S:
                return
            self.last = time.monotonic()
            n = {s: sum(t.status == s for t in trials) for s in ("RUNNING", "TERMINATED", "ERROR", "PENDING")}
            best = f"{self.best[0]:.4g} ({self.best[1]})" if self.best else "none yet"
            print(f"[sweep] {len(trials)} trials: {n['RUNNING']} running, {n['TERMINATED']} done or stopped, "
                  f"{n['ERROR']} failed, {n['PENDING']} pending; best {metric} {best}", flush=True)

    return StatusLine()


def _plan(campaign: Campaign, name: str, uri: str | None):
    """Trials (with the rungs' eval overrides and the objective pinned), objective, rungs."""
    first = plan_trials(campaign, name, uri)
    metric, mode = objective(campaign, first[0].config)
    if not first[0].config.tracking.enabled:
        raise ConfigError("tracking.enabled", "false; a campaign records its trials in MLflow: allowed: true")
    r = rungs(campaign, max(t.config.trainer.max_steps for t in first))
    pinned = (f"eval.objective={json.dumps({'metric': metric, 'mode': mode})}",)
    return plan_trials(campaign, name, uri, (r.overrides if r else ()) + pinned), metric, mode, r


def _start_parent(campaign: Campaign, trials, name: str, uri: str | None, metric: str, mode: str):
    from tunefleet.tracking import Tracker, flatten_dict

    cfg = trials[0].config
    parent = Tracker.start(uri or cfg.tracking.uri, cfg.tracking.experiment, name, tags={
        "tunefleet.kind": "campaign", "tunefleet.campaign": campaign.campaign.name,
        "tunefleet.objective_metric": metric, "tunefleet.objective_mode": mode})
    parent.log_params(flatten_dict({"campaign": asdict(campaign.campaign),
                                    "space": {"common": campaign.space.common, "methods": campaign.space.methods}}))
    parent.log_dict({"trials": [{"trial_id": t.trial_id, "method": t.method, "values": t.values,
                                 "run_name": t.config.run.name} for t in trials]}, "campaign/trials.json")
    return parent


def run_sweep(campaign: Campaign, tracking_uri: str | None = None, ship_package: bool = False) -> SweepResult:
    """Run every trial of `campaign` under its scheduler and budgets; log and return the leaderboard.
    Raises ConfigError before Ray starts, SweepFailed when no trial succeeded."""
    from ray import tune

    from tunefleet.cluster import init_ray
    from tunefleet.pipelines.train_job import storage_path

    name = f"{campaign.campaign.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trials, metric, mode, r = _plan(campaign, name, tracking_uri)
    init_ray(ship_package=ship_package)
    parent = _start_parent(campaign, trials, name, tracking_uri, metric, mode)
    b = campaign.campaign.budget
    where = f"rungs {r.milestones()} {r.time_attr}" if r else "no early stopping"
    print(f"[sweep] campaign {name}: {len(trials)} trials ({', '.join(sorted({t.method for t in trials}))}), "
          f"objective {metric} ({mode}), {campaign.campaign.scheduler.type}: {where}; "
          f"{b.max_concurrent} at a time; MLflow run {parent.run_id}", flush=True)
    # A trial's checkpoint reports carry no objective; Tune's strict check would fail them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    job = _Job(tuple(trials), campaign.campaign.name, parent.run_id)
    scheduler = _scheduler(r)  # kept: after the fit it says which trials ASHA stopped
    trainable = tune.with_resources(tune.with_parameters(_run_trial, job=job), {"cpu": TRIAL_CPU})
    tuner = tune.Tuner(trainable, param_space=param_space(trials),
                       tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler,
                                                   max_concurrent_trials=b.max_concurrent,
                                                   time_budget_s=b.wall_time_s),
                       run_config=tune.RunConfig(name=name, storage_path=storage_path(trials[0].config),
                                                 callbacks=[_status_callback(metric, mode)], verbose=1))
    started = time.monotonic()
    try:
        grid = tuner.fit()
        out_of_time = b.wall_time_s is not None and time.monotonic() - started >= 0.98 * b.wall_time_s
        results = {res.config["trial"]: res for res in grid if res.config}
        rows = _settle(parent, trials, results, metric, getattr(scheduler, "stopped", {}),
                       "wall_time" if out_of_time else "stopped")
    except BaseException:
        parent.finish("FAILED")
        raise
    return _finish(parent, rows, metric, mode)


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
    `stopped`: trial index -> the result ASHA stopped it on; `other_stop`: the stop reason of a
    trial Tune ended otherwise (the campaign's wall time)."""
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
            seconds = at.get("time_total_s", seconds) if at else seconds
            client.set_tag(child.info.run_id, "tunefleet.stop_reason", "asha" if at else other_stop)
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
