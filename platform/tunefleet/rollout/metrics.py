"""Rollout metrics: exported to Prometheus through `ray.util.metrics` (from the pool actor)
and returned as a plain dict that the driver logs to MLflow (`log_to_tracker`).

Every exported name starts with `tunefleet_`; dashboards query exactly the names in
`METRIC_NAMES`. Each carries the tags `pool` (the pool's actor name) and `run` (the run's
name: a run's pool is named `<run>-rollout`, pipelines/rl_pool.py); telemetry/registry.py
lists them with the platform's other metrics.
"""

from __future__ import annotations

METRIC_NAMES = {
    "tokens_per_s": "tunefleet_rollout_tokens_per_second",
    "tokens_total": "tunefleet_rollout_generated_tokens_total",
    "queue_depth": "tunefleet_rollout_queue_depth",
    "sync_seconds": "tunefleet_rollout_sync_seconds",
    "policy_version": "tunefleet_rollout_policy_version",
    "engines_ready": "tunefleet_rollout_engines_ready",
    "engine_restarts": "tunefleet_rollout_engine_restarts_total",
    "requests_retried": "tunefleet_rollout_requests_retried_total",  # their engine died
    "stale_regenerated": "tunefleet_rollout_stale_regenerated_total",  # older than max_staleness
}
TAG_KEYS = ("pool", "run")
COUNTERS = ("tokens_total", "engine_restarts", "requests_retried", "stale_regenerated")
SYNC_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


def run_of_pool(pool_name: str) -> str:
    """The run a pool serves (`<run>-rollout`); a pool named otherwise is its own run."""
    return pool_name.removesuffix("-rollout") or pool_name


class RolloutMetrics:
    """The pool's metrics. `snapshot()` is the dict the driver logs (keys `rollout/<name>`)."""

    def __init__(self, pool_name: str, export: bool = True):
        self.values: dict[str, float] = {k: 0.0 for k in METRIC_NAMES}
        self._tags = {"pool": pool_name, "run": run_of_pool(pool_name)}
        self._ray = self._make_ray_metrics() if export else {}

    def _make_ray_metrics(self) -> dict:
        from ray.util.metrics import Counter, Gauge, Histogram

        keys = TAG_KEYS
        made = {}
        for key, name in METRIC_NAMES.items():
            if key in COUNTERS:
                made[key] = Counter(name, description=f"rollout {key}", tag_keys=keys)
            elif key == "sync_seconds":
                made[key] = Histogram(name, description="weight sync wall time (s)", boundaries=SYNC_BUCKETS_S,
                                      tag_keys=keys)
            else:
                made[key] = Gauge(name, description=f"rollout {key}", tag_keys=keys)
        return made

    def set(self, key: str, value: float) -> None:
        """A gauge (tokens/s, queue depth, version, engines ready)."""
        self.values[key] = float(value)
        if key in self._ray:
            self._ray[key].set(float(value), tags=self._tags)

    def inc(self, key: str, value: float = 1.0) -> None:
        """A counter (tokens generated, engine restarts)."""
        self.values[key] += float(value)
        if key in self._ray:
            self._ray[key].inc(float(value), tags=self._tags)

    def observe_sync(self, seconds: float) -> None:
        """One finished sync's wall time (the snapshot keeps the last one)."""
        self.values["sync_seconds"] = float(seconds)
        if "sync_seconds" in self._ray:
            self._ray["sync_seconds"].observe(max(float(seconds), 1e-9), tags=self._tags)

    def snapshot(self) -> dict[str, float]:
        return {f"rollout/{k}": v for k, v in self.values.items()}


def log_to_tracker(tracker, snapshot: dict[str, float], step: int) -> None:
    """Driver side: log a pool's `metrics()` snapshot into the run (a Tracker)."""
    tracker.log_metrics(dict(snapshot), step=step)
