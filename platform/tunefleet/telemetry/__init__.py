"""Prometheus metrics: the registry of names and labels, and the exporters (ray.util.metrics).

Import-light (no torch, no Ray until a metric is emitted inside a Ray process).
"""

from tunefleet.telemetry.export import (
    TrainingMetrics,
    campaign_status,
    job_kind,
    loop_metrics,
    training_metrics,
)
from tunefleet.telemetry.registry import LABELS, RAY_BUILTINS, REGISTRY, MetricSpec, exported_names, known_series

__all__ = ["LABELS", "RAY_BUILTINS", "REGISTRY", "MetricSpec", "TrainingMetrics", "campaign_status",
           "exported_names", "job_kind", "known_series", "loop_metrics", "training_metrics"]
