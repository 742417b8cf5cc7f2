"""A tracking server that is down when a run starts warns; it never stops training."""

import socket

import pytest

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import _NoTracker, _start_tracker


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_unreachable_server_at_start_warns_and_continues(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = load_config(None, ["model.name=tiny-llama", "data.task=arith", f"tracking.uri=http://127.0.0.1:{_dead_port()}"])
    with pytest.warns(UserWarning, match="without tracking"):
        tracker = _start_tracker(cfg, "outage")
    assert isinstance(tracker, _NoTracker) and tracker.run_id is None
    tracker.log_metrics({"loss": 1.0}, step=1)  # all calls are harmless no-ops
