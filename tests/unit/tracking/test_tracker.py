"""Unit tests for tunefleet.tracking (local sqlite store, no server, no Ray)."""

from __future__ import annotations

import json
import os
import socket
import warnings

import pytest

from tunefleet.tracking import (
    MAX_PARAM_VAL_LENGTH,
    MAX_TAG_VAL_LENGTH,
    Tracker,
    default_tracking_uri,
    flatten_dict,
)
from tunefleet.tracking import tracker as tracker_mod

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


# One sqlite store for the module: creating (migrating) a fresh MLflow db takes seconds.
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("tfhome")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEFLEET_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield {"home": home, "uri": f"sqlite:///{home}/mlflow.db"}
    mp.undo()


@pytest.fixture
def tracker(store, request):
    return Tracker.start(store["uri"], f"exp-{request.node.name}", "run")


@pytest.fixture
def client(store):
    return MlflowClient(tracking_uri=store["uri"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Down:
    """Replacement for a client method while the 'server' is down."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise mlflow.exceptions.MlflowException(
            "API request to http://x/api/2.0/mlflow/runs/log-batch failed with exception "
            "ConnectionRefusedError"
        )


# ------------------------------------------------------------------------------ helpers
def test_flatten_dict():
    d = {"a": 1, "b": {"c": "x", "d": {"e": None}}, "l": [1, 2], "t": (3,), "empty": {}}
    assert flatten_dict(d) == {
        "a": 1,
        "b.c": "x",
        "b.d.e": "null",
        "l": "[1, 2]",
        "t": "(3,)",
        "empty": "{}",
    }
    assert flatten_dict({"x": {"y": 2}}, prefix="cfg") == {"cfg.x.y": 2}


def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert default_tracking_uri() == "http://mlflow:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("TUNEFLEET_HOME", str(tmp_path))
    assert default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_limits_match_mlflow():
    from mlflow.utils import validation

    assert MAX_PARAM_VAL_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert MAX_TAG_VAL_LENGTH == validation.MAX_TAG_VAL_LENGTH
    assert tracker_mod._MAX_ENTITY_KEY_LENGTH == validation.MAX_ENTITY_KEY_LENGTH
    assert tracker_mod._MAX_PARAMS_TAGS_PER_BATCH == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert tracker_mod._MAX_METRICS_PER_BATCH == validation.MAX_METRICS_PER_BATCH
    assert tracker_mod._MAX_DATASET_DIGEST_SIZE == validation.MAX_DATASET_DIGEST_SIZE


# ------------------------------------------------------------------------------ logging
def test_start_prints_and_uses_sqlite_artifacts(store, client, capsys):
    t = Tracker.start(store["uri"], "exp-start", "my-run", tags={"team": "rl"})
    out = capsys.readouterr().out
    assert f"MLflow run id: {t.run_id} (tracking uri: {store['uri']})" in out
    assert t.uri == store["uri"]
    run = client.get_run(t.run_id)
    assert run.info.run_name == "my-run"
    assert run.data.tags["team"] == "rl"
    exp = client.get_experiment_by_name("exp-start")
    assert exp.artifact_location == (store["home"] / "mlartifacts").as_uri()
    # second start in the same experiment reuses the experiment, makes a new run
    t2 = Tracker.start(store["uri"], "exp-start", "my-run")
    assert t2.run_id != t.run_id
    assert client.get_run(t2.run_id).info.experiment_id == exp.experiment_id


def test_params_metrics_tags_roundtrip(tracker, client):
    params = {f"p{i}": i for i in range(150)}  # > 100: two log_batch chunks
    params["nested"] = {"lr": 1e-4, "betas": [0.9, 0.95], "none": None}
    tracker.log_params(params)
    # re-logging identical params (e.g. after resume) is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.log_params(params)
    for step in range(3):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "nan": float("nan"), "inf": float("inf"),
                             "lr": 0.1}, step=step)
    tracker.set_tags({"stage": "sft", "bad key!": "v"})

    data = client.get_run(tracker.run_id).data
    assert data.params["p149"] == "149"
    assert data.params["nested.lr"] == "0.0001"
    assert data.params["nested.betas"] == "[0.9, 0.95]"
    assert data.params["nested.none"] == "null"
    assert data.tags["stage"] == "sft"
    assert data.tags["bad key_"] == "v"  # sanitized instead of rejected
    hist = client.get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [
        (0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))
    ]
    assert "nan" not in data.metrics and "inf" not in data.metrics
    assert data.metrics["lr"] == 0.1


def test_changed_param_warns_and_logs_the_rest(tracker, client):
    tracker.log_params({"a": 1, "b": 2})
    with pytest.warns(UserWarning, match=r"different value.*\['a'\]"):
        tracker.log_params({"a": 10, "b": 2, "c": 3})
    params = client.get_run(tracker.run_id).data.params
    assert params == {"a": "1", "b": "2", "c": "3"}
    assert tracker.pending == 0


def test_param_truncation(tracker, client):
    tracker.log_params({"long": "x" * (MAX_PARAM_VAL_LENGTH + 500), "short": "y"})
    tracker.set_tags({"longtag": "z" * (MAX_TAG_VAL_LENGTH + 10)})
    data = client.get_run(tracker.run_id).data
    assert data.params["long"] == "x" * MAX_PARAM_VAL_LENGTH
    assert data.params["short"] == "y"
    assert len(data.tags["longtag"]) == MAX_TAG_VAL_LENGTH


def test_artifacts(tracker, client, tmp_path):
    f = tmp_path / "report.txt"
    f.write_text("hello")
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"1")
    (d / "sub" / "b.bin").write_bytes(b"2")
    tracker.log_artifact(f)
    tracker.log_artifact(d, artifact_path="checkpoints")
    tracker.log_text("some text", "notes/readme.md")
    tracker.log_dict({"k": [1, 2]}, "cfg/config.json")
    with pytest.warns(UserWarning, match="does not exist"):
        tracker.log_artifact(tmp_path / "missing.txt")

    assert tracker.list_artifacts() == [
        "cfg/config.json",
        "checkpoints/a.bin",
        "checkpoints/sub/b.bin",
        "notes/readme.md",
        "report.txt",
    ]
    local = client.download_artifacts(tracker.run_id, "cfg/config.json", str(tmp_path / "dl"))
    assert json.loads(open(local).read()) == {"k": [1, 2]}


def test_dataset(tracker, client):
    digest = "ab" * 32  # sha256 hex: longer than MLflow's 36-char dataset digest limit
    tracker.log_dataset("train", digest, 1234, "HuggingFaceH4/ultrachat_200k")
    tracker.log_dataset("eval", "deadbeef", 10, "https://example.com/eval.jsonl")
    run = client.get_run(tracker.run_id)
    for kv in (run.data.tags, run.data.params):
        assert kv["dataset.train.digest"] == digest
        assert kv["dataset.train.rows"] == "1234"
        assert kv["dataset.train.source"] == "HuggingFaceH4/ultrachat_200k"
        assert kv["dataset.eval.rows"] == "10"
    inputs = {di.dataset.name: di for di in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "eval"}
    train = inputs["train"].dataset
    assert train.digest == digest[:36]
    assert json.loads(train.profile) == {"num_rows": 1234}
    assert "ultrachat_200k" in train.source
    assert {t.key: t.value for t in inputs["train"].tags}["mlflow.data.context"] == "train"
    assert inputs["eval"].dataset.source_type == "http"


def test_resume_tag_reuses_run(store, client):
    exp = "exp-resume"
    t1 = Tracker.start(store["uri"], exp, "run", resume_tag=("tunefleet.job", "job-1"))
    t1.log_params({"lr": 0.1})
    t1.log_metrics({"loss": 1.0}, step=0)
    t1.finish("KILLED")
    assert client.get_run(t1.run_id).info.status == "KILLED"

    t2 = Tracker.start(store["uri"], exp, "run", tags={"attempt": "2"},
                       resume_tag=("tunefleet.job", "job-1"))
    assert t2.run_id == t1.run_id
    run = client.get_run(t2.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["attempt"] == "2"
    t2.log_params({"lr": 0.1})  # identical re-log on resume: no crash
    t2.log_metrics({"loss": 0.5}, step=1)
    t2.finish()
    assert [m.step for m in client.get_metric_history(t2.run_id, "loss")] == [0, 1]
    assert client.get_run(t2.run_id).info.status == "FINISHED"

    other = Tracker.start(store["uri"], exp, "run", resume_tag=("tunefleet.job", "job-2"))
    assert other.run_id != t1.run_id
    assert client.get_run(other.run_id).data.tags["tunefleet.job"] == "job-2"


def test_attach_logs_into_existing_run(tracker, client, store):
    worker = Tracker.attach(store["uri"], tracker.run_id)
    assert worker.run_id == tracker.run_id and worker.uri == store["uri"]
    worker.log_metrics({"rank0/loss": 2.0}, step=7)
    assert client.get_metric_history(tracker.run_id, "rank0/loss")[0].step == 7


# ------------------------------------------------------------------------------ outages
def test_outage_buffers_then_flush_replays_in_order(tracker, client, tmp_path):
    down = _Down()
    tracker._client.log_batch = down  # "server goes down"
    with pytest.warns(UserWarning, match=r"MLflow unreachable \(.*\); buffering") as rec:
        for step in range(5):
            tracker.log_metrics({"loss": float(step), "acc": step / 10}, step=step)
        tracker.log_params({"late": "param"})
    assert len([w for w in rec if "unreachable" in str(w.message)]) == 1  # once per outage
    assert tracker.pending == 6
    assert tracker.flush() is False  # still down
    assert tracker.pending == 6

    del tracker._client.log_batch  # "server is back"
    assert tracker.flush() is True
    assert tracker.pending == 0
    hist = client.get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(s, float(s)) for s in range(5)]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "acc")] == list(range(5))
    assert client.get_run(tracker.run_id).data.params["late"] == "param"


def test_outage_next_successful_call_replays_first(tracker, client):
    tracker.retry_interval_s = 0.0
    down = _Down()
    tracker._client.log_batch = down
    with pytest.warns(UserWarning, match="MLflow unreachable"):
        tracker.log_metrics({"loss": 0.0}, step=0)
        tracker.log_metrics({"loss": 1.0}, step=1)
    assert down.calls >= 2
    del tracker._client.log_batch
    tracker.log_metrics({"loss": 2.0}, step=2)  # replays steps 0,1 before logging step 2
    assert tracker.pending == 0
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [0, 1, 2]

    # a new outage warns again
    tracker._client.log_batch = down
    with pytest.warns(UserWarning, match="MLflow unreachable"):
        tracker.log_metrics({"loss": 3.0}, step=3)
    del tracker._client.log_batch
    tracker.finish()
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [0, 1, 2, 3]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_outage_backoff_does_not_hit_server_each_call(tracker):
    tracker.retry_interval_s = 3600.0
    down = _Down()
    tracker._client.log_batch = down
    with pytest.warns(UserWarning, match="MLflow unreachable"):
        for step in range(20):
            tracker.log_metrics({"loss": 1.0}, step=step)
    assert down.calls == 1
    assert tracker.pending == 20
    del tracker._client.log_batch
    assert tracker.flush() is True


def test_buffer_is_bounded(tracker, client):
    tracker.max_buffer = 3
    tracker._client.log_batch = _Down()
    with pytest.warns(UserWarning) as rec:
        for step in range(5):
            tracker.log_metrics({"loss": float(step)}, step=step)
    msgs = [str(w.message) for w in rec]
    assert any("buffer full" in m for m in msgs)
    assert tracker.pending == 3
    del tracker._client.log_batch
    assert tracker.flush()
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [2, 3, 4]


def test_unreachable_http_server_warns_fast_and_buffers(monkeypatch):
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    uri = f"http://127.0.0.1:{_free_port()}"
    t = Tracker.attach(uri, "0" * 32)

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    with pytest.warns(UserWarning, match="MLflow unreachable"):
        t.log_metrics({"loss": 1.0}, step=1)
        t.log_params({"a": 1})
        t.set_tags({"b": "2"})
    assert t.pending == 3
    assert t.flush() is False
    with pytest.warns(UserWarning, match="not delivered"):
        t.finish()


def test_user_http_env_is_respected(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    Tracker.attach(f"http://127.0.0.1:{_free_port()}", "0" * 32)

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
