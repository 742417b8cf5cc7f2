"""init_ray names its cluster explicitly: never Ray's guess among the instances on the machine."""

import types

import pytest
import ray

from tunefleet import cluster


@pytest.fixture
def fake_ray(monkeypatch):
    calls, state = [], {"up": False}

    def init(address=None, **kwargs):
        calls.append((address, kwargs))
        state["up"] = True

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "shutdown", lambda: state.update(up=False))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address="127.0.0.1:7777"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "_STARTED_ADDRESS", None)
    return calls


def test_local_start_is_explicit_and_exported(fake_ray, monkeypatch):
    import os

    cluster.init_ray()
    address, kwargs = fake_ray[-1]
    assert address == "local"  # not None/"auto", which attach to another `ray start` cluster
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:7777"
    assert kwargs["runtime_env"]["worker_process_setup_hook"] == "tunefleet.cluster.pin_ray_address"
    cluster.shutdown_ray()
    assert "RAY_ADDRESS" not in os.environ
    cluster.init_ray()  # a fresh local cluster, not the dead one's address
    assert fake_ray[-1][0] == "local"


def test_stale_own_address_is_not_dialled_after_a_plain_shutdown(fake_ray):
    import os

    cluster.init_ray()
    ray.shutdown()  # someone else's plain ray.shutdown(): the exported address is now stale
    cluster.init_ray()
    assert fake_ray[-1][0] == "local"
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:7777"


def test_user_address_is_used_and_kept(fake_ray, monkeypatch):
    import os

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")
    cluster.init_ray()
    assert fake_ray[-1][0] == "127.0.0.1:6390"
    cluster.shutdown_ray()
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:6390"


def test_worker_hook_exports_the_workers_own_cluster(monkeypatch):
    import os

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address="127.0.0.1:9999"))
    cluster.pin_ray_address()
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:9999"
