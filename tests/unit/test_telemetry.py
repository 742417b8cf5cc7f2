"""Platform metrics (tunefleet.telemetry): silent without Ray, and with a (fake) Ray backend
each call reaches the registry's metric with exactly its label keys, as Ray demands."""

import pytest

from tunefleet.rollout.metrics import TAG_KEYS, RolloutMetrics, run_of_pool
from tunefleet.telemetry import REGISTRY, campaign_status, job_kind, training_metrics
from tunefleet.telemetry import export as ex


class _Fake:
    """Stands in for ray.util.metrics Gauge/Counter/Histogram; Ray rejects tags that are not
    exactly its tag_keys, and so does this."""

    made: dict = {}

    def __init__(self, name, description="", tag_keys=(), boundaries=None):
        self.name, self.keys, self.calls = name, tuple(tag_keys), []
        _Fake.made[name] = self

    def _record(self, op, value, tags):
        assert set(tags) == set(self.keys), (self.name, tags, self.keys)
        self.calls.append((op, value, dict(tags)))

    def set(self, value, tags):
        self._record("set", value, tags)

    def inc(self, value, tags):
        self._record("inc", value, tags)


@pytest.fixture
def fake_ray(monkeypatch):
    _Fake.made = {}
    monkeypatch.setattr(ex, "_made", {})
    monkeypatch.setattr(ex, "_disabled", False)
    monkeypatch.setattr(ex, "_ray_ready", lambda: True)
    monkeypatch.setattr(ex, "_classes", lambda: {"gauge": _Fake, "counter": _Fake, "histogram": _Fake})
    return _Fake.made


def test_registry_names_are_prefixed_and_labelled():
    for name, spec in REGISTRY.items():
        assert name.startswith("tunefleet_"), name
        assert spec.type in ("gauge", "counter", "histogram")
        assert spec.type != "counter" or name.endswith("_total"), name
        assert "run" in spec.labels, name


def test_everything_is_a_no_op_without_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ex, "_made", {})
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # an earlier test's cluster may still be up
    m = training_metrics("r", "train", "sft")
    m.update(1, loss=2.0, grad_norm=1.0, tokens_per_s=3.0, world_size=2)
    m.restart()
    m.eval_objective(0.5, "eval/x/acc")
    campaign_status("c", 1, 2, 3)
    assert ex._made == {}


def test_step_sets_each_gauge_present(fake_ray):
    m = training_metrics("run1", "rl", "grpo")
    m.step(7, {"loss": 1.5, "grad_norm": 0.3, "tokens_per_s": 100.0, "world_size": 2.0, "reward_mean": 0.25,
               "staleness_mean": 0.5, "lr": 1e-3})
    tags = {"run": "run1", "kind": "rl", "method": "grpo"}
    assert fake_ray["tunefleet_train_step"].calls == [("set", 7.0, tags)]
    assert fake_ray["tunefleet_train_loss"].calls == [("set", 1.5, tags)]
    assert fake_ray["tunefleet_reward_mean"].calls == [("set", 0.25, tags)]
    assert fake_ray["tunefleet_rollout_staleness_mean"].calls == [("set", 0.5, tags)]
    assert "tunefleet_rollout_staleness_max" not in fake_ray  # absent from the step: not set


def test_update_restart_and_objective(fake_ray):
    m = training_metrics("r", "train", "sft")
    m.update(3, loss=2.0, world_size=1)
    assert "tunefleet_train_grad_norm" not in fake_ray
    assert fake_ray["tunefleet_train_world_size"].calls[0][1] == 1.0
    m.restart()
    m.restart()
    assert [c[0] for c in fake_ray["tunefleet_train_restarts_total"].calls] == ["inc", "inc"]
    m.eval_objective(0.75, "eval/arith_l1/exact_match")
    [(op, value, tags)] = fake_ray["tunefleet_eval_objective"].calls
    assert value == 0.75 and tags["metric"] == "eval/arith_l1/exact_match" and tags["run"] == "r"


def test_campaign_status_sets_one_series_per_state(fake_ray):
    campaign_status("methods", running=2, stopped=1, done=4)
    calls = fake_ray["tunefleet_campaign_trials"].calls
    assert {c[2]["state"]: c[1] for c in calls} == {"running": 2.0, "stopped": 1.0, "done": 4.0}
    assert {c[2]["run"] for c in calls} == {"methods"} and {c[2]["kind"] for c in calls} == {"sweep"}


def test_a_broken_backend_warns_once_and_turns_off(fake_ray, monkeypatch):
    def broken():
        raise RuntimeError("no metrics agent")

    monkeypatch.setattr(ex, "_classes", broken)
    m = training_metrics("r", "train", "sft")
    with pytest.warns(UserWarning, match="no metrics agent"):
        m.update(1, loss=1.0)
    m.update(2, loss=1.0)  # no second warning, no exception
    assert ex._disabled


class _Cfg:
    class algorithm:
        BATCH = "rl"


def test_job_kind():
    assert job_kind(_Cfg) == "rl"
    assert job_kind(_Cfg, {"report_evals": True}) == "sweep"
    assert job_kind(_Cfg, {"job_kind": "selfplay", "report_evals": True}) == "selfplay"


def test_rollout_metrics_carry_pool_and_run(monkeypatch):
    assert run_of_pool("myrun-rollout") == "myrun" and run_of_pool("pool") == "pool"
    m = RolloutMetrics("myrun-rollout", export=False)
    assert m._tags == {"pool": "myrun-rollout", "run": "myrun"} and set(m._tags) == set(TAG_KEYS)
    assert REGISTRY["tunefleet_rollout_queue_depth"].labels == TAG_KEYS
    assert REGISTRY["tunefleet_rollout_sync_seconds"].type == "histogram"
