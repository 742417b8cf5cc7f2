"""Connecting to Ray: an existing cluster (RAY_ADDRESS, `ray job submit`) or a local one.

Every process the platform starts names its cluster explicitly. Ray's own fallbacks
(`address=None`/`"auto"`: the newest `ray start` cluster on the machine, or any GCS process
it can find) pick another user's cluster, or fail with "Found multiple active Ray
instances", as soon as a second Ray instance runs on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

# The RAY_ADDRESS this process set for a local cluster it started (dropped again once that
# cluster is shut down, so the next init_ray starts a fresh one instead of dialling a dead one).
_STARTED_ADDRESS: str | None = None


def _quiet_env() -> None:
    # Workers must never reach a hub, and Ray's usage stats ping would only time out here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pin_ray_address() -> None:
    """Worker-process setup hook: export this worker's own cluster as RAY_ADDRESS.

    Ray's internals that open a second connection from inside a worker (Ray Train's
    placement-group cleaner asks the state API whether the controller lives) resolve the
    cluster from RAY_ADDRESS, and without it guess from the processes on the machine.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def _own_address() -> str | None:
    """RAY_ADDRESS as the user set it (None when it is only our own, stale, local one)."""
    global _STARTED_ADDRESS
    address = os.environ.get("RAY_ADDRESS")
    if _STARTED_ADDRESS is not None and address == _STARTED_ADDRESS:
        del os.environ["RAY_ADDRESS"]
        address = None
    _STARTED_ADDRESS = None
    return address


def runtime_env(ship_package: bool = False) -> dict:
    """The job's runtime env: our settings for the workers, and the address pin hook."""
    # The object store's endpoint travels with the job (workers on every node must reach the
    # same storage); credentials do not: a runtime env is readable in the dashboard, so they
    # come from each node's environment (a Secret on Kubernetes) or its instance role.
    from tunefleet.storage import ENDPOINT_VARS

    forward = ("TUNEFLEET_HOME", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "AWS_DEFAULT_REGION", *ENDPOINT_VARS)
    env_vars = {k: os.environ[k] for k in forward if k in os.environ}
    # Ray Train tees print() into its logger as well, which shows every status line twice.
    env_vars["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    env = {"env_vars": env_vars, "worker_process_setup_hook": "tunefleet.cluster.pin_ray_address"}
    if ship_package:
        env["py_modules"] = [str(Path(__file__).resolve().parent)]
    return env


def init_ray(ship_package: bool = False, dashboard: bool = True, num_cpus: int | None = None):
    """Connect to the cluster in RAY_ADDRESS if set, else start a new local one.

    Never attaches to a cluster found on the machine: a local start is `address="local"`,
    and its address is exported as RAY_ADDRESS for this process and every worker.
    ship_package: upload this source tree's `tunefleet` to the workers (py_modules), for
    clusters whose image does not have it installed (`ray job submit` from a checkout).
    dashboard: on by default: Ray Train's controller queries the state API (which the
    dashboard serves), and Tune over Train hangs without it (../shared/STACK.md).
    """
    global _STARTED_ADDRESS
    import ray

    _quiet_env()
    if ray.is_initialized():
        return ray
    address = _own_address()
    env = runtime_env(ship_package)
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        ray.init(address="local", runtime_env=env, include_dashboard=dashboard, num_cpus=num_cpus,
                 log_to_driver=True)
        _STARTED_ADDRESS = os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return ray


def started_locally() -> bool:
    """Whether this process started the Ray cluster it is connected to (it cannot grow)."""
    return _STARTED_ADDRESS is not None


def shutdown_ray() -> None:
    """ray.shutdown(), and forget the RAY_ADDRESS of a local cluster this process started,
    so that subprocesses started afterwards do not dial the dead cluster."""
    global _STARTED_ADDRESS
    import ray

    ray.shutdown()
    if _STARTED_ADDRESS is not None and os.environ.get("RAY_ADDRESS") == _STARTED_ADDRESS:
        del os.environ["RAY_ADDRESS"]
    _STARTED_ADDRESS = None
