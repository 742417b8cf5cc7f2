"""Campaign files (`tunefleet sweep CAMPAIGN`, `tunefleet validate CAMPAIGN`): a base run
config, a conditional search space over methods and their own hyperparameters, the search,
the scheduler, the objective, budgets and per-trial resources.

    campaign:
      name: methods
      base: ../configs/sft_lora.yaml        # relative to the campaign file
      overrides: [data.task=arith]           # applied to the base, then to every trial
      num_samples: 8
      search: random                         # random | grid | optuna
      scheduler: {type: asha, reduction_factor: 3, rungs: 3}   # or {type: pbt, rungs: 3, mutate: [trainer.lr]}
      objective: {metric: eval/arith_l2/exact_match, mode: max}   # default: the base eval.objective
      budget: {max_concurrent: 2, wall_time_s: 900, train_tokens: null}
      resources: {cpus: 2, gpus: 0}
    space:
      common: {trainer.lr: {loguniform: [1.0e-4, 1.0e-3]}, model.lora.r: {choice: [4, 8]}}
      methods:
        sft: {}
        dpo: {beta: {choice: [0.05, 0.1, 0.5]}}
        grpo: {group_size: {choice: [4, 8]}, trainer.batch_size: 8}

A method's own hyperparameters are written bare (`beta`: `algorithm.beta`) and exist only
when that method is drawn; a dotted key sets any field. A value is a constant or one of
{choice: [...]}, {grid: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}.
Validation builds a trial config for every method at every corner of its space (each choice,
each bound), so a value no trial could run with fails here, before any worker starts.
Imports neither torch nor Ray.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunefleet.config.evaluation import ObjectiveConfig
from tunefleet.config.loader import ConfigError, apply_overrides, build, check, did_you_mean, read_yaml_file
from tunefleet.config.loader import dotted as _p

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class SchedulerConfig:
    """`asha`: stop trials whose objective trails at a rung (budget points in training tokens);
    `pbt`: exploit/explore between trials at each rung; `fifo`: run every trial to the end.
    `max_tokens`: a full trial's training target tokens (the top rung; rungs below it at
    max_tokens / reduction_factor**k); null: rungs in steps, the top one at trainer.max_steps."""

    type: Literal["asha", "pbt", "fifo"] = "asha"
    reduction_factor: int = 3
    rungs: int = 3
    max_tokens: int | None = None
    # PBT: `rungs` evenly spaced points (in steps; checkpoints are in steps) at which the
    # bottom `quantile_fraction` of trials restore a top trial's checkpoint and go on with its
    # config, the keys in `mutate` perturbed (x0.8 / x1.2, or a neighbouring choice), or
    # resampled with `resample_probability`.
    mutate: tuple[str, ...] = ()
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25

    def validate(self, path: str) -> None:
        check(self.reduction_factor >= 2, _p(path, "reduction_factor"), self.reduction_factor, ">= 2")
        check(self.rungs >= 1, _p(path, "rungs"), self.rungs, ">= 1")
        check(self.max_tokens is None or self.max_tokens >= 1, _p(path, "max_tokens"), self.max_tokens, ">= 1 or null")
        check(0 < self.quantile_fraction <= 0.5, _p(path, "quantile_fraction"), self.quantile_fraction, "in (0, 0.5]")
        check(0 <= self.resample_probability <= 1, _p(path, "resample_probability"), self.resample_probability,
              "in [0, 1]")
        if self.type != "pbt":
            check(not self.mutate, _p(path, "mutate"), list(self.mutate), "empty unless type is pbt")
            return
        check(self.max_tokens is None, _p(path, "max_tokens"), self.max_tokens,
              "null with pbt (it exploits checkpoints, which are written at steps)")
        check(self.rungs >= 2, _p(path, "rungs"), self.rungs, ">= 2 with pbt (the last point ends the trial)")
        check(bool(self.mutate), _p(path, "mutate"), list(self.mutate), "at least one hyperparameter with pbt")


@dataclass(frozen=True)
class BudgetConfig:
    """`wall_time_s`/`train_tokens`: the whole campaign's; null = unlimited."""

    max_concurrent: int = 1
    wall_time_s: float | None = None
    train_tokens: int | None = None

    def validate(self, path: str) -> None:
        check(self.max_concurrent >= 1, _p(path, "max_concurrent"), self.max_concurrent, ">= 1")
        check(self.wall_time_s is None or self.wall_time_s > 0, _p(path, "wall_time_s"), self.wall_time_s, "> 0")
        check(self.train_tokens is None or self.train_tokens > 0, _p(path, "train_tokens"), self.train_tokens, "> 0")


@dataclass(frozen=True)
class TrialResources:
    """What each trial's Train workers get together, split evenly between them
    (`trainer.cpus_per_worker = cpus / workers`; gpus: one per worker, `trainer.device=cuda`).
    An RL trial's rollout engines come on top (`rollout.resources_per_engine`). Unset: each
    trial's own trainer config decides."""

    cpus: float = 2.0
    gpus: int = 0

    def validate(self, path: str) -> None:
        check(self.cpus > 0, _p(path, "cpus"), self.cpus, "> 0")
        check(self.gpus >= 0, _p(path, "gpus"), self.gpus, ">= 0")


@dataclass(frozen=True)
class CampaignSection:
    name: str
    base: str | None = None
    overrides: tuple[str, ...] = ()
    num_samples: int = 1
    search: Literal["random", "grid", "optuna"] = "random"
    seed: int = 0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    objective: ObjectiveConfig | None = None
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    resources: TrialResources | None = None

    def validate(self, path: str) -> None:
        ok = bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name)
        check(ok, _p(path, "name"), self.name, "letters, digits, '-', '_' and '.'")
        check(self.num_samples >= 1, _p(path, "num_samples"), self.num_samples, ">= 1")


def _check_dist(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        return  # a constant
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise ConfigError(path, f"bad value {value!r}; allowed: a constant or one of "
                          f"{', '.join('{' + d + ': ...}' for d in DISTRIBUTIONS)}")
    kind, arg = next(iter(value.items()))
    if not isinstance(arg, list) or not arg:
        raise ConfigError(f"{path}.{kind}", f"bad value {arg!r}; allowed: a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        nums = len(arg) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arg)
        check(nums and arg[0] < arg[1], f"{path}.{kind}", arg, "[low, high] numbers with low < high")
        check(kind != "loguniform" or arg[0] > 0, f"{path}.{kind}", arg, "low > 0")
        check(kind != "randint" or all(isinstance(a, int) for a in arg), f"{path}.{kind}", arg, "integers")


@dataclass(frozen=True)
class Space:
    """`common`: dotted key -> distribution for every method; `methods`: method -> its own."""

    methods: dict = field(default_factory=dict)
    common: dict = field(default_factory=dict)

    def validate(self, path: str) -> None:
        if not self.methods:
            raise ConfigError(_p(path, "methods"), "empty; name at least one method (e.g. sft: {})")
        for key, value in self.common.items():
            _check_dist(value, f"{path}.common.{key}")
        for method, params in self.methods.items():
            if not isinstance(params, dict):
                raise ConfigError(f"{path}.methods.{method}", f"bad value {params!r}; expected a mapping")
            for key, value in params.items():
                _check_dist(value, f"{path}.methods.{method}.{key}")


@dataclass(frozen=True)
class Campaign:
    campaign: CampaignSection
    space: Space
    base_config: dict = field(default_factory=dict)  # the base run config (YAML + overrides), resolved


def _algorithm_fields(method: str) -> list[str]:
    from tunefleet.config import ALGORITHM_CONFIGS

    return [f.name for f in dataclasses.fields(ALGORITHM_CONFIGS[method]) if f.name != "type"]


def dotted_key(method: str, key: str) -> str:
    """A method-space key as a run-config path: bare names are the method's own fields."""
    return key if "." in key else f"algorithm.{key}"


def _check_methods(space: Space) -> None:
    from tunefleet.config import ALGORITHM_CONFIGS

    for method, params in space.methods.items():
        if method not in ALGORITHM_CONFIGS:
            known = ", ".join(sorted(ALGORITHM_CONFIGS))
            raise ConfigError(f"space.methods.{method}", f"unknown method{did_you_mean(method, ALGORITHM_CONFIGS)}; "
                              f"allowed: {known}")
        own = _algorithm_fields(method)
        for key in params:
            name = key.removeprefix("algorithm.")
            if "." not in name and name not in own:
                raise ConfigError(f"space.methods.{method}.{key}", f"{method} has no hyperparameter {name!r}"
                                  f"{did_you_mean(name, own)}; its hyperparameters: {', '.join(own) or 'none'}")


def corners(value: Any) -> list[Any]:
    """The values validation tries for one distribution: each choice, or both bounds."""
    if not isinstance(value, dict):
        return [value]
    kind, arg = next(iter(value.items()))
    return list(arg) if kind in ("choice", "grid") else [arg[0], arg[1]]


def method_params(space: Space, method: str) -> dict[str, Any]:
    """Dotted key -> distribution of everything a `method` trial samples."""
    return {**space.common, **{dotted_key(method, k): v for k, v in space.methods[method].items()}}


def trial_dict(campaign: Campaign, method: str, values: dict[str, Any]) -> dict:
    """The run-config dict of one trial: the base with `algorithm` replaced by the method's."""
    base = {k: v for k, v in campaign.base_config.items() if k != "algorithm"}
    algo = dict(campaign.base_config.get("algorithm") or {}) if campaign.base_config.get(
        "algorithm", {}).get("type") == method else {}
    data = {**base, "algorithm": {**algo, "type": method}}
    return apply_overrides(data, [f"{k}={_yaml(v)}" for k, v in values.items()])


def _yaml(v: Any) -> str:
    import json

    return json.dumps(v)  # JSON is YAML: lists, numbers and strings survive the override parser


def _check_trials(campaign: Campaign) -> None:
    from tunefleet.config import config_from_dict

    for method in campaign.space.methods:
        params = method_params(campaign.space, method)
        try:
            config_from_dict(trial_dict(campaign, method, {k: corners(d)[0] for k, d in params.items()}))
        except ConfigError as err:
            raise ConfigError("campaign.base", f"the base config (with campaign.overrides) is not a valid {method} "
                              f"run: {err}") from None
        for key, value in params.items():
            for v in corners(value):
                pinned = {k: corners(d)[0] for k, d in params.items()}
                try:
                    config_from_dict(trial_dict(campaign, method, {**pinned, key: v}))
                except ConfigError as err:
                    raise ConfigError(f"space.methods.{method}" if key in _own_keys(campaign, method) else
                                      "space.common", f"a {method} trial with {key}={v!r} is not a valid run: {err}"
                                      ) from None


def _own_keys(campaign: Campaign, method: str) -> set[str]:
    return {dotted_key(method, k) for k in campaign.space.methods[method]}


def load_campaign(path: str | Path, overrides: typing.Sequence[str] = ()) -> Campaign:
    """Read, apply overrides and validate every method's trials. `campaign.x=...` and
    `space.x=...` change the campaign; any other override (`model.name=tiny-llama`) goes to
    every trial's run config, after `campaign.overrides`."""
    path = Path(path)
    own = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in ("campaign", "space")]
    data = apply_overrides(read_yaml_file(path), own)
    runs = [o for o in overrides if o not in own]
    if runs:
        section = dict(data.get("campaign") or {})
        section["overrides"] = [*(section.get("overrides") or []), *runs]
        data = {**data, "campaign": section}
    for key in data:
        if key not in ("campaign", "space"):
            hint = did_you_mean(key, ["campaign", "space"])
            raise ConfigError(key, f"unknown section{hint}; allowed: campaign, space")
    section = build(CampaignSection, data.get("campaign"), "campaign")
    raw = dict(data.get("space") or {})
    # A dotted override (space.common.trainer.lr=...) arrives nested: flatten it back.
    raw = {k: (_flatten(v) if k == "common" and isinstance(v, dict) else v) for k, v in raw.items()}
    if isinstance(raw.get("methods"), dict):
        raw["methods"] = {m: _flatten(p) if isinstance(p, dict) else p for m, p in raw["methods"].items()}
    space = build(Space, raw, "space")
    base = read_yaml_file((path.parent / section.base).resolve()) if section.base else {}
    return _checked(Campaign(section, space, apply_overrides(base, section.overrides)))


def _checked(campaign: Campaign) -> Campaign:
    _check_methods(campaign.space)
    _check_trials(campaign)
    _check_pbt(campaign)
    return campaign


# What PBT may change mid-run: a checkpoint carries the weights' shape, the batch and the data
# order, so only what the optimizer (re-applied after loading) or the loss reads each step.
PBT_MUTABLE = ("trainer.lr", "trainer.weight_decay")  # and any algorithm.<field>


def _check_pbt(campaign: Campaign) -> None:
    c = campaign.campaign
    if c.scheduler.type != "pbt":
        return
    check(c.search != "optuna", "campaign.search", c.search, "random or grid with pbt (PBT proposes its own configs)")
    space = campaign.space
    for i, key in enumerate(c.scheduler.mutate):
        path = f"campaign.scheduler.mutate[{i}]"
        ok = key in PBT_MUTABLE or (key.startswith("algorithm.") and key.count(".") == 1)
        check(ok, path, key, f"{', '.join(PBT_MUTABLE)} or algorithm.<hyperparameter>")
        dists = [method_params(space, m).get(key) for m in sorted(space.methods)]
        missing = [m for m, d in zip(sorted(space.methods), dists) if not isinstance(d, dict)]
        check(not missing, path, key, f"a key every method samples from a distribution (not in {', '.join(missing)})")


def campaign_to_dict(campaign: Campaign) -> dict:
    """Everything the campaign's trials are planned from, resolved (the base file read, its
    overrides applied): what `tunefleet sweep --resume` plans the same trials from again."""
    return {"campaign": dataclasses.asdict(campaign.campaign),
            "space": {"common": campaign.space.common, "methods": campaign.space.methods},
            "base_config": campaign.base_config}


def campaign_from_dict(data: dict) -> Campaign:
    """The inverse of campaign_to_dict, validated again (the code may have changed since)."""
    section = build(CampaignSection, data.get("campaign"), "campaign")
    space = build(Space, data.get("space"), "space")
    return _checked(Campaign(section, space, dict(data.get("base_config") or {})))


def _flatten(d: dict, prefix: str = "") -> dict:
    """{"trainer": {"lr": {choice: [...]}}} -> {"trainer.lr": {choice: [...]}}; distributions stay whole."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        # One key over a non-mapping is a distribution (a bad one's name is reported later).
        is_dist = isinstance(v, dict) and len(v) == 1 and (next(iter(v)) in DISTRIBUTIONS
                                                           or isinstance(next(iter(v.values())), list))
        if isinstance(v, dict) and v and not is_dist:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = {n: [_number(a) for a in arg] if isinstance(arg, list) else arg
                        for n, arg in v.items()} if is_dist else v
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 as a string; in a distribution it means the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def is_campaign_file(path: str | Path) -> bool:
    """A YAML file whose top level has `campaign:` (a run config never does)."""
    try:
        return "campaign" in read_yaml_file(path)
    except (ConfigError, OSError):
        return False


def sample(campaign: Campaign, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One random trial: (method, dotted key -> value); methods are drawn uniformly."""
    method = rng.choice(sorted(campaign.space.methods))
    values = {}
    for key, dist in method_params(campaign.space, method).items():
        values[key] = _draw(dist, rng)
    return method, values


def _draw(dist: Any, rng: random.Random) -> Any:
    if not isinstance(dist, dict):
        return dist
    kind, arg = next(iter(dist.items()))
    if kind in ("choice", "grid"):
        return rng.choice(arg)
    if kind == "uniform":
        return rng.uniform(arg[0], arg[1])
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1])))
    return rng.randint(arg[0], arg[1])


def grid(campaign: Campaign) -> list[tuple[str, dict[str, Any]]]:
    """Every (method, values) of the grid: choices and grids crossed; ranges need random search."""
    out = []
    for method in sorted(campaign.space.methods):
        params = method_params(campaign.space, method)
        for key, dist in params.items():
            if isinstance(dist, dict) and next(iter(dist)) not in ("choice", "grid"):
                raise ConfigError(f"space: {key}", f"{next(iter(dist))} cannot be gridded; use choice/grid "
                                  "or campaign.search: random")
        keys = list(params)
        for combo in itertools.product(*(corners(params[k]) for k in keys)):
            out.append((method, dict(zip(keys, combo))))
    return out
