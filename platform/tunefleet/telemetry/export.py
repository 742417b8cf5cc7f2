"""Platform metrics into Prometheus through `ray.util.metrics` (names and labels: registry.py).

A metric object can only be made in a process connected to Ray (a Ray worker or actor, or a
driver after `ray.init`), so each is made on first use, once per process. Without Ray (unit
tests, the CLI before `ray.init`) every call is a silent no-op, and a failure to export
warns once and turns exporting off: metrics must never stop training.

Where they are emitted: training, RL reward and staleness by rank 0 after each step
(train/loop.py: `loop_metrics(...).step(done, metrics)`), restarts by rank 0 when a worker
group starts from a checkpoint, the eval objective at each eval point (train/eval_hook.py),
campaign trial counts by the sweep driver (`campaign_status`).
"""

from __future__ import annotations

import sys
import warnings

from tunefleet.telemetry.registry import REGISTRY

_made: dict[str, object] = {}  # this process's ray.util.metrics objects, by name
_disabled = False


def _ray_ready() -> bool:
    ray = sys.modules.get("ray")  # not imported: certainly not connected (and no import cost)
    return ray is not None and ray.is_initialized()


def _classes():
    from ray.util.metrics import Counter, Gauge, Histogram

    return {"gauge": Gauge, "counter": Counter, "histogram": Histogram}


def _create(name: str):
    spec = REGISTRY[name]
    cls = _classes()[spec.type]
    kwargs = {"boundaries": list(spec.boundaries)} if spec.type == "histogram" else {}
    return cls(name, description=spec.description, tag_keys=spec.labels, **kwargs)


def _metric(name: str):
    """The process's metric object for registry entry `name`, or None (no Ray, or disabled)."""
    global _disabled
    if _disabled or not _ray_ready():
        return None
    if name not in _made:
        try:
            _made[name] = _create(name)
        except Exception as err:  # noqa: BLE001 - a metrics backend problem must not stop a job
            _disabled = True
            warnings.warn(f"Prometheus metrics are off in this process: {err}", stacklevel=3)
            return None
    return _made[name]


def _emit(name: str, method: str, value: float, tags: dict[str, str]) -> None:
    global _disabled
    metric = _metric(name)
    if metric is None:
        return
    try:
        getattr(metric, method)(float(value), tags=tags)
    except Exception as err:  # noqa: BLE001 - as above
        _disabled = True
        warnings.warn(f"Prometheus metrics are off in this process: {err}", stacklevel=3)


def set_gauge(name: str, value: float, tags: dict[str, str]) -> None:
    """Set gauge `name` (a registry name) for `tags` (its label keys, every one)."""
    _emit(name, "set", value, tags)


def inc_counter(name: str, tags: dict[str, str], value: float = 1.0) -> None:
    """Add `value` to counter `name` for `tags`."""
    _emit(name, "inc", value, tags)


# The step-metric keys (train/loop.py's dict) each gauge takes its value from.
STEP_GAUGES = {
    "loss": "tunefleet_train_loss",
    "grad_norm": "tunefleet_train_grad_norm",
    "tokens_per_s": "tunefleet_train_tokens_per_second",
    "world_size": "tunefleet_train_world_size",
    "reward_mean": "tunefleet_reward_mean",
    "staleness_mean": "tunefleet_rollout_staleness_mean",
    "staleness_max": "tunefleet_rollout_staleness_max",
}


class TrainingMetrics:
    """One run's training, RL and eval gauges (labels run, kind, method)."""

    def __init__(self, run: str, kind: str, method: str):
        self.tags = {"run": str(run), "kind": str(kind), "method": str(method)}

    def update(self, step: int, loss: float | None = None, grad_norm: float | None = None,
               tokens_per_s: float | None = None, world_size: int | None = None) -> None:
        """After an optimizer step (rank 0): the gauges given, and the step."""
        self.step(step, {"loss": loss, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
                         "world_size": world_size})

    def step(self, step: int, metrics: dict) -> None:
        """After an optimizer step (rank 0), from the loop's metric dict: every STEP_GAUGES
        key present and not None (an RL step's `reward_mean`, `staleness_*` too)."""
        set_gauge("tunefleet_train_step", step, self.tags)
        for key, name in STEP_GAUGES.items():
            if metrics.get(key) is not None:
                set_gauge(name, metrics[key], self.tags)

    def restart(self) -> None:
        """A worker group started again from a checkpoint."""
        inc_counter("tunefleet_train_restarts_total", self.tags)

    def reward_mean(self, value: float) -> None:
        set_gauge("tunefleet_reward_mean", value, self.tags)

    def eval_objective(self, value: float, metric: str = "") -> None:
        """The objective `metric` (e.g. eval/arith_l1/exact_match) at an eval point."""
        set_gauge("tunefleet_eval_objective", value, {**self.tags, "metric": metric})


def training_metrics(run: str, kind: str, method: str) -> TrainingMetrics:
    """Gauges for one run; cheap (the metric objects are shared by the process)."""
    return TrainingMetrics(run, kind, method)


def job_kind(cfg, loop_config: dict | None = None) -> str:
    """The `kind` label: `loop_config["job_kind"]` when the driver names it, else sweep (a
    campaign trial), rl (batches from a RolloutPool) or train."""
    loop_config = loop_config or {}
    if loop_config.get("job_kind"):
        return str(loop_config["job_kind"])
    if loop_config.get("report_evals"):
        return "sweep"
    return "rl" if cfg.algorithm.BATCH == "rl" else "train"


def _run_name(loop_config: dict) -> str:
    if loop_config.get("run_name"):
        return str(loop_config["run_name"])
    try:  # inside a Ray Train worker the run's name is the RunConfig name
        import ray.train

        return ray.train.get_context().get_experiment_name()
    except Exception:  # noqa: BLE001 - outside Ray Train (unit tests)
        return "unknown"


def loop_metrics(cfg, loop_config: dict) -> TrainingMetrics:
    """The training loop's gauges, labelled from its config and Ray Train context."""
    return training_metrics(_run_name(loop_config), job_kind(cfg, loop_config), cfg.algorithm.type)


CAMPAIGN_STATES = ("running", "stopped", "done")


def campaign_status(campaign: str, running: int, stopped: int, done: int) -> None:
    """Trial counts of campaign `campaign` (the sweep driver, after each trial event):
    running, early-stopped (a scheduler stopped it), done (finished its budget or failed)."""
    for state, count in zip(CAMPAIGN_STATES, (running, stopped, done)):
        set_gauge("tunefleet_campaign_trials", count, {"run": str(campaign), "kind": "sweep", "state": state})
