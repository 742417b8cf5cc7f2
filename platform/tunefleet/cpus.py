"""The CPUs this process may really use: its allowed CPU set and its cgroup's CPU quota.

`os.cpu_count()` counts the host's CPUs. In a container with a CPU limit (Kubernetes
`limits.cpu`, `docker --cpus`), under `taskset`, or on a Ray node started with a cpuset,
only some of those may run this process's threads (the affinity mask), and a cgroup quota
may cap the time it gets on them. Pinning engines to absolute core indices from 0 then
oversubscribes (threads beyond the quota are throttled) or fails (EINVAL for a core outside
the mask)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def allowed_cpus() -> list[int]:
    """Indices of the cores this process may run on, ascending (sched_getaffinity)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """CPUs' worth of time the cgroup quota allows (e.g. 1.5), or None without a quota.
    cgroup v2 `cpu.max` ("max 100000" or "150000 100000"), else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = CGROUP) -> list[int]:
    """The allowed cores, cut to as many as the quota pays for (rounded up: 1.5 CPUs of quota
    spread over 2 cores still runs 2 threads at once, each throttled less)."""
    cpus = allowed_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = cpus[:max(1, math.ceil(limit))]
    return cpus
