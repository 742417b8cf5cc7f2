"""Rank 0's MLflow records reach the driver's Tracker in order, with rank 0's timestamps,
and files arrive byte for byte (tracking/relay.py; the control actor replaced in-process)."""

import types

import pytest

from tunefleet.tracking import relay
from tunefleet.train.control import RunControl


class _Actor:
    """A RunControl called as an actor handle would be (`.method.remote(...)`)."""

    def __init__(self):
        self.obj = RunControl()
        self.push = types.SimpleNamespace(remote=lambda records: self.obj.push(records))
        self.take = types.SimpleNamespace(remote=lambda: self.obj.take())


class _Tracker:
    run_id = "r1"

    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step, timestamp_ms=None):
        self.calls.append(("metrics", metrics, step, timestamp_ms))

    def log_artifact(self, path, artifact_path=None):
        self.calls.append(("file", open(path, "rb").read(), artifact_path))


@pytest.fixture
def no_ray_get(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)


def test_records_reach_the_driver_in_order_with_rank0_timestamps(tmp_path, no_ray_get, monkeypatch):
    control, tracker = _Actor(), _Tracker()
    monkeypatch.setattr(relay.time, "time", lambda: 1700000000.25)
    worker = relay.RelayTracker(control, "r1")
    sample = tmp_path / "step_000002.parquet"
    sample.write_bytes(b"\x00PAR1\xff")
    with relay.relay_records(tracker, control, every_s=3600):  # nothing drains until the block ends
        worker.log_metrics({"loss": 2.5, "note": "text", "step_time_s": 1}, step=1)
        worker.log_metrics({"loss": 2.0}, step=2)
        worker.log_artifact(str(sample), "rollouts")
        worker.flush()
        assert tracker.calls == []
    assert tracker.calls == [("metrics", {"loss": 2.5, "step_time_s": 1.0}, 1, 1700000000250),
                             ("metrics", {"loss": 2.0}, 2, 1700000000250),
                             ("file", b"\x00PAR1\xff", "rollouts")]
    assert control.obj.take() == []  # taken once: nothing is logged twice


def test_the_thread_drains_while_the_block_runs(no_ray_get):
    import time

    control, tracker = _Actor(), _Tracker()
    worker = relay.RelayTracker(control, "r1")
    with relay.relay_records(tracker, control, every_s=0.01):
        worker.log_metrics({"loss": 1.0}, step=1)
        deadline = time.time() + 5
        while not tracker.calls and time.time() < deadline:
            time.sleep(0.01)
        assert [c[2] for c in tracker.calls] == [1]


def test_without_a_run_nothing_is_relayed(no_ray_get):
    control = _Actor()
    control.obj.push([("metrics", {"loss": 1.0}, 1, 0)])
    tracker = types.SimpleNamespace(run_id=None)
    with relay.relay_records(tracker, control):
        pass
    assert len(control.obj.take()) == 1


def test_unknown_record_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown relayed record kind 'blob'"):
        relay.apply(_Tracker(), ("blob", 1), tmp_path)
