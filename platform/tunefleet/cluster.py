"""Connecting to Ray: an existing cluster (RAY_ADDRESS, `ray job submit`) or a local one."""

from __future__ import annotations

import os
from pathlib import Path


def _quiet_env() -> None:
    # Workers must never reach a hub, and Ray's usage stats ping would only time out here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def init_ray(ship_package: bool = False, dashboard: bool = True, num_cpus: int | None = None):
    """Connect to RAY_ADDRESS / a running cluster if there is one, else start a local one.

    ship_package: upload this source tree's `tunefleet` to the workers (py_modules), for
    clusters whose image does not have it installed (`ray job submit` from a checkout).
    dashboard: on by default: Ray Train's controller queries the state API (which the
    dashboard serves), and Tune over Train hangs without it (../shared/STACK.md).
    """
    import ray

    _quiet_env()
    if ray.is_initialized():
        return ray
    env_vars = {k: os.environ[k] for k in ("TUNEFLEET_HOME", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE")
                if k in os.environ}
    # Ray Train tees print() into its logger as well, which shows every status line twice.
    env_vars["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    env = {"env_vars": env_vars}
    if ship_package:
        env["py_modules"] = [str(Path(__file__).resolve().parent)]
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        ray.init(runtime_env=env, include_dashboard=dashboard, num_cpus=num_cpus, log_to_driver=True)
    return ray
