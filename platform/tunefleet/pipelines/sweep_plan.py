"""The pure half of `tunefleet sweep`: which trials, judged by what, stopped where.

Everything here is decided before Ray starts, so a campaign that cannot run fails with a
ConfigError naming the field. Imports neither torch nor Ray.

Trials are ours, not Tune's: the conditional space (a method's own hyperparameters exist only
when it is drawn) is sampled by config/campaign.py, and Tune only sees the index of a trial
(`param_space = {"trial": grid_search([0, 1, ...])}`), which the trainable looks up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunefleet.config import Config, ConfigError, config_from_dict
from tunefleet.config.campaign import Campaign, corners, grid, method_params, sample, trial_dict
from tunefleet.config.evaluation import default_mode
from tunefleet.config.loader import apply_overrides


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its index, method, sampled values (dotted key -> value) and run config."""

    index: int
    method: str
    values: dict
    config: Config

    @property
    def trial_id(self) -> str:
        return f"t{self.index:03d}"


@dataclass(frozen=True)
class Rungs:
    """ASHA's budget points, or PBT's. `time_attr`: what a trial's reports count its budget in
    ("train_tokens" or "step"); rungs at grace_period * reduction_factor**k up to max_t (PBT:
    reduction_factor 1, a point every grace_period).
    `overrides`: what makes every trial evaluate (and report) at those points."""

    time_attr: str
    max_t: int
    grace_period: int
    reduction_factor: int
    overrides: tuple[str, ...]

    def milestones(self) -> list[int]:
        """The budget points: geometric for ASHA; evenly spaced for PBT (reduction_factor 1)."""
        out, t = [], self.grace_period
        while t <= self.max_t:
            out.append(t)
            t = t * self.reduction_factor if self.reduction_factor > 1 else t + self.grace_period
        return out


def draw_trials(campaign: Campaign) -> list[tuple[str, dict]]:
    """(method, values) of every trial: `num_samples` random draws (seeded by campaign.seed),
    or each grid point once."""
    c = campaign.campaign
    if c.search == "optuna":  # Optuna proposes trials as it goes: these only stand for each method
        return [(m, {k: corners(d)[0] for k, d in method_params(campaign.space, m).items()})
                for m in sorted(campaign.space.methods)]
    if c.search == "grid":
        return grid(campaign)
    rng = random.Random(c.seed)
    return [sample(campaign, rng) for _ in range(c.num_samples)]


def objective(campaign: Campaign, cfg: Config) -> tuple[str, str]:
    """(metric, "max" | "min"): campaign.objective, else the base config's eval.objective."""
    obj = campaign.campaign.objective or cfg.eval.objective
    if obj is None:
        raise ConfigError("campaign.objective", "not set, and the base config has no eval.objective; "
                          "allowed: {metric: eval/<suite>/<metric>, mode: max|min}")
    return obj.metric, obj.mode or default_mode(obj.metric)


PBT_KEEP = 3  # checkpoints a PBT trial keeps: a donor's must outlive the restart of the trial exploiting it


def rungs(campaign: Campaign, max_steps: int) -> Rungs | None:
    """ASHA's rungs, or PBT's perturbation points (None for fifo). With `scheduler.max_tokens`
    the budget is training tokens and trials evaluate every grace_period tokens; without it,
    steps, the top rung at `max_steps`, and trials evaluate every grace_period steps. PBT's
    points are `rungs` evenly spaced steps, each with an eval and a checkpoint to exploit."""
    s = campaign.campaign.scheduler
    if s.type == "fifo":
        return None
    if s.type == "pbt":
        every = max(1, max_steps // s.rungs)
        return Rungs("step", max_steps, every, 1, (f"eval.every_steps={every}", f"checkpoint.every_steps={every}",
                                                    f"checkpoint.keep={PBT_KEEP}"))
    attr, max_t, key = ("train_tokens", s.max_tokens, "eval.every_tokens") if s.max_tokens else \
        ("step", max_steps, "eval.every_steps")
    grace = max(1, max_t // s.reduction_factor ** (s.rungs - 1))
    return Rungs(attr, max_t, grace, s.reduction_factor, (f"{key}={grace}",))


def plan_trials(campaign: Campaign, prefix: str, tracking_uri: str | None,
                extra: tuple[str, ...] = ()) -> list[TrialSpec]:
    """Every trial's validated run config: the campaign's trial dict, then `extra` (the
    rungs' eval overrides), a unique `run.name` (`<prefix>-tNNN-<method>`: never resumes an
    older run) and the campaign's tracking URI."""
    return [trial_spec(campaign, prefix, tracking_uri, extra, i, method, values)
            for i, (method, values) in enumerate(draw_trials(campaign))]


def trial_spec(campaign: Campaign, prefix: str, tracking_uri: str | None, extra: tuple[str, ...], index: int,
               method: str, values: dict, run_name: str | None = None) -> TrialSpec:
    """Trial `index`'s validated run config (see plan_trials); `run_name` replaces the planned name."""
    data = trial_dict(campaign, method, values)
    more = [*extra, f"run.name={run_name or f'{prefix}-t{index:03d}-{method}'}"]
    if tracking_uri:
        more.append(f"tracking.uri={tracking_uri}")
    try:
        cfg = config_from_dict(apply_overrides(data, more))
        res = campaign.campaign.resources
        if res is not None:  # split among the trial's workers (known only once its config is)
            cfg = config_from_dict(apply_overrides(data, [*more, *_resource_overrides(res, cfg.trainer.max_workers)]))
    except ConfigError as err:
        raise ConfigError(f"trial t{index:03d} ({method})", str(err)) from None
    return TrialSpec(index, method, dict(values), cfg)


def _resource_overrides(res, workers: int) -> list[str]:
    if res.gpus and res.gpus != workers:
        raise ConfigError("campaign.resources.gpus", f"bad value {res.gpus}: a trial runs {workers} Train worker(s), "
                          f"one GPU each; allowed: 0 or {workers}")
    return [f"trainer.cpus_per_worker={res.cpus / workers}", *(["trainer.device=cuda"] if res.gpus else [])]


OPTUNA_SEP = "|"  # Tune splits parameter names on "/"; a method's own keys are "<method>|<key>"


class OptunaSpace:
    """Optuna's define-by-run space: the method first, then only that method's parameters
    (conditional: `dpo|algorithm.beta` exists only in DPO trials). Constants are returned.
    A class, not a closure: Tune pickles the searcher into its experiment state."""

    def __init__(self, campaign: Campaign):
        self.campaign = campaign

    def __call__(self, trial) -> dict:
        space = self.campaign.space
        method = trial.suggest_categorical("method", sorted(space.methods))
        constants = {}
        for key, dist in method_params(space, method).items():
            name = _optuna_name(space, method, key)
            if not isinstance(dist, dict):
                constants[name] = dist
                continue
            kind, arg = next(iter(dist.items()))
            if kind in ("choice", "grid"):
                trial.suggest_categorical(name, arg)
            elif kind == "randint":
                trial.suggest_int(name, arg[0], arg[1])
            else:
                trial.suggest_float(name, arg[0], arg[1], log=kind == "loguniform")
        return constants


def optuna_space(campaign: Campaign) -> OptunaSpace:
    return OptunaSpace(campaign)


def _optuna_name(space, method: str, key: str) -> str:
    return key if key in space.common else f"{method}{OPTUNA_SEP}{key}"


def from_optuna(campaign: Campaign, config: dict) -> tuple[str, dict]:
    """(method, dotted key -> value) of a trial Optuna proposed (its Tune config)."""
    method = config["method"]
    values = {}
    for key in method_params(campaign.space, method):
        values[key] = config[_optuna_name(campaign.space, method, key)]
    return method, values


def param_space(trials: list[TrialSpec], pbt: bool = False) -> dict:
    """Tune's view of the trials: only their indices (as a grid, so each runs once). Under
    PBT also each trial's method and values, which PBT copies and perturbs (`values` nested:
    dotted keys stay whole)."""
    from ray import tune

    space = {"trial": tune.grid_search([t.index for t in trials])}
    if pbt:
        space["method"] = tune.sample_from(_ByTrial({t.index: t.method for t in trials}))
        space["values"] = tune.sample_from(_ByTrial({t.index: dict(t.values) for t in trials}))
    return space


class _ByTrial:
    """A sample_from function: the trial's own entry (a class: Tune pickles its space)."""

    def __init__(self, by_index: dict):
        self.by_index = by_index

    def __call__(self, config: dict):
        return self.by_index[config["trial"]]


def pbt_mutations(campaign: Campaign) -> dict:
    """PBT's hyperparam_mutations: {"values": {key: a list (choice, grid) or a Tune domain}}."""
    from ray import tune

    domains = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    some = sorted(campaign.space.methods)[0]  # every method samples a mutated key (config/campaign.py)
    out = {}
    for key in campaign.campaign.scheduler.mutate:
        kind, arg = next(iter(method_params(campaign.space, some)[key].items()))
        out[key] = list(arg) if kind in ("choice", "grid") else domains[kind](*arg)
    return {"values": out}


def short_value(v) -> str:
    """A hyperparameter for a table: floats with 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_resources(cfg) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds: its Train workers, plus the rollout engines of online RL
    (cost accounting: CPU-seconds = CPUs x the trial's wall time)."""
    t = cfg.trainer
    cpus = t.max_workers * t.cpus_per_worker
    gpus = float(t.max_workers) if t.device == "cuda" else 0.0
    if cfg.algorithm.BATCH == "rl":
        cpus += cfg.rollout.num_engines * cfg.rollout.resources_per_engine
    return float(cpus), gpus
