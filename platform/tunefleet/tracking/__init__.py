"""MLflow experiment tracking for tunefleet (driver / rank-0 only, outage tolerant)."""

from tunefleet.tracking.tracker import (
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    Tracker,
    default_tracking_uri,
    flatten_dict,
)

__all__ = [
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "Tracker",
    "default_tracking_uri",
    "flatten_dict",
]
