"""Ray Train settings around fit(): set for the fit only, and never over a user's value."""

import os

from tunefleet.train.trainer import ray_train_env

TIMEOUT, POLL = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"


def test_elastic_settings_apply_during_fit_only(monkeypatch):
    monkeypatch.delenv(TIMEOUT, raising=False)
    monkeypatch.delenv(POLL, raising=False)
    with ray_train_env(elastic=True):
        assert os.environ[TIMEOUT] == "10" and os.environ[POLL] == "2"
    assert TIMEOUT not in os.environ and POLL not in os.environ
    with ray_train_env(elastic=False):
        assert TIMEOUT not in os.environ and os.environ[POLL] == "2"


def test_user_values_win(monkeypatch):
    monkeypatch.setenv(TIMEOUT, "120")
    with ray_train_env(elastic=True):
        assert os.environ[TIMEOUT] == "120"
    assert os.environ[TIMEOUT] == "120"
