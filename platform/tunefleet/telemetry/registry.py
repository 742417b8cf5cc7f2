"""Every Prometheus metric the platform exports: its name, type, label keys and meaning.

One table for the code that exports (telemetry/export.py, rollout/metrics.py) and for the
dashboards (dashboards/*.json, whose test checks every queried name against it). Imports
neither torch nor Ray.

Names are what `ray.util.metrics` is given (`tunefleet_...`). Ray's metrics agent prefixes
every application metric with `ray_` in its Prometheus export (measured on Ray 2.60:
`Gauge("tunefleet_x")` is scraped as `ray_tunefleet_x`), and adds its own labels
(`WorkerId`, `NodeAddress`, `SessionName`, `Component`, `Version`): PromQL queries
`ray_tunefleet_...` and aggregates those away (`max by (run, kind, method) (...)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunefleet.rollout.metrics import COUNTERS as ROLLOUT_COUNTERS
from tunefleet.rollout.metrics import METRIC_NAMES as ROLLOUT_NAMES
from tunefleet.rollout.metrics import SYNC_BUCKETS_S, TAG_KEYS

RAY_EXPORT_PREFIX = "ray_"
# run: the run's name (`run.name`, what MLflow tags `tunefleet.run_name`; a campaign's name
# for campaign series); kind: the job kind (train | rl | sweep, see export.job_kind);
# method: the config's `algorithm.type` (sft, dpo, grpo, ...).
LABELS = ("run", "kind", "method")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric. `type`: gauge | counter | histogram; `boundaries`: histogram
    bucket bounds (seconds)."""

    type: str
    labels: tuple[str, ...]
    description: str
    boundaries: tuple[float, ...] = ()


def _gauge(description: str, labels: tuple[str, ...] = LABELS) -> MetricSpec:
    return MetricSpec("gauge", labels, description)


_PLATFORM = {
    # training: set by rank 0 after every optimizer step (train/loop.py)
    "tunefleet_train_step": _gauge("optimizer steps done"),
    "tunefleet_train_loss": _gauge("the step's loss (global, over all ranks)"),
    "tunefleet_train_grad_norm": _gauge("the step's gradient norm before clipping"),
    "tunefleet_train_tokens_per_second": _gauge("real (non-padding) tokens per second over the step, all ranks"),
    "tunefleet_train_world_size": _gauge("Ray Train workers in the group"),
    "tunefleet_train_restarts_total": MetricSpec(
        "counter", LABELS, "worker-group starts from a checkpoint: failure retries, elastic resizes, preemption "
        "drains, resumed runs (one series per restarted rank-0 process: sum them)"),
    # RL: rank 0, from the step's rollouts (train/rollout_source.py)
    "tunefleet_reward_mean": _gauge("mean reward over every sample generated for the step"),
    "tunefleet_rollout_staleness_mean": _gauge("policy versions between the trained policy and the samples' (mean)"),
    "tunefleet_rollout_staleness_max": _gauge("policy versions between the trained policy and the samples' (max)"),
    # eval: rank 0 at each eval point (train/eval_hook.py); `metric` is the objective's name
    "tunefleet_eval_objective": _gauge("the run's objective metric at its newest eval point", LABELS + ("metric",)),
    # campaigns: the sweep driver's status callback (pipelines/sweep_job.py); run = campaign
    "tunefleet_campaign_trials": _gauge("trials of the campaign by state (running | stopped | done)",
                                        ("run", "kind", "state")),
}


def _rollout_spec(key: str) -> MetricSpec:
    if key in ROLLOUT_COUNTERS:
        return MetricSpec("counter", TAG_KEYS, f"rollout pool: {key}")
    if key == "sync_seconds":
        return MetricSpec("histogram", TAG_KEYS, "rollout pool: weight sync wall time (s)", tuple(SYNC_BUCKETS_S))
    return MetricSpec("gauge", TAG_KEYS, f"rollout pool: {key}")


# the RolloutPool's own metrics (rollout/metrics.py exports them from the pool actor)
_ROLLOUT = {name: _rollout_spec(key) for key, name in ROLLOUT_NAMES.items()}

REGISTRY: dict[str, MetricSpec] = {**_PLATFORM, **_ROLLOUT}

# Ray's built-in series the dashboards query instead of re-exporting them (names as Ray 2.60
# exports them; `ray_train_*` exist while a Ray Train run does, GPU ones only on GPU nodes).
RAY_BUILTINS: dict[str, str] = {
    "ray_node_cpu_utilization": "node CPU utilisation (%)",
    "ray_node_cpu_count": "CPUs per node",
    "ray_node_mem_used": "node memory used (bytes)",
    "ray_node_mem_total": "node memory (bytes)",
    "ray_node_gpus_utilization": "GPU utilisation (%), GPU nodes only",
    "ray_node_gram_used": "GPU memory used (MiB), GPU nodes only",
    "ray_object_store_memory": "object store memory by location (bytes)",
    "ray_train_controller_state": "Ray Train controller state (one series per state; 1 = current)",
    "ray_train_worker_group_start_total_time_s": "time spent starting worker groups (s)",
    "ray_train_report_total_blocked_time_s": "time workers spent blocked in ray.train.report (s)",
    "ray_train_checkpoint_sync_total_time_s": "time spent persisting checkpoints (s)",
    "ray_train_checkpoint_transfer_total_time_s": "time spent uploading checkpoints to storage (s)",
}


def exported_names(name: str) -> tuple[str, ...]:
    """The Prometheus series names Ray exports for registry metric `name` (histograms as
    `_bucket`, `_sum`, `_count`)."""
    full = RAY_EXPORT_PREFIX + name
    if REGISTRY[name].type == "histogram":
        return tuple(full + s for s in ("_bucket", "_sum", "_count"))
    return (full,)


def known_series() -> set[str]:
    """Every series name a dashboard may query: the registry's exports and Ray's built-ins."""
    return {s for n in REGISTRY for s in exported_names(n)} | set(RAY_BUILTINS)
