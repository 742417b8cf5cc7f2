"""Usable CPUs: the affinity mask (checked for real under `taskset`) and the cgroup quota."""

import os
import shutil
import subprocess
import sys

import pytest

from tunefleet.cpus import cgroup_cpu_limit, usable_cpus


def _cgroup(tmp_path, files: dict):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_cgroup_v2_quota(tmp_path):
    assert cgroup_cpu_limit(_cgroup(tmp_path / "a", {"cpu.max": "150000 100000\n"})) == 1.5
    assert cgroup_cpu_limit(_cgroup(tmp_path / "b", {"cpu.max": "max 100000\n"})) is None


def test_cgroup_v1_quota(tmp_path):
    root = _cgroup(tmp_path, {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root) == 0.5
    unlimited = _cgroup(tmp_path / "u", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(unlimited) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_quota_cuts_the_allowed_set(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7, 9})
    assert usable_cpus(_cgroup(tmp_path / "q", {"cpu.max": "150000 100000"})) == [3, 5]  # 1.5 CPUs: 2 cores
    assert usable_cpus(_cgroup(tmp_path / "s", {"cpu.max": "20000 100000"})) == [3]  # never below one
    assert usable_cpus(tmp_path / "nolimit") == [3, 5, 7, 9]


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and at least 2 allowed cores")
def test_under_taskset_an_engine_is_pinned_to_an_allowed_core():
    """The last allowed core only: the old pinning (indices from 0) chose core 0, outside the mask."""
    core = max(os.sched_getaffinity(0))
    code = ("import os; from tunefleet.config.rollout import RolloutConfig; from tunefleet.rollout.engine import "
            "engine_cores; cores = engine_cores(RolloutConfig(num_engines=1, resources_per_engine=1), 0); "
            "os.sched_setaffinity(0, cores); print(cores, sorted(os.sched_getaffinity(0)))")
    out = subprocess.run(["taskset", "-c", str(core), sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.split("\n")[-2] == f"[{core}] [{core}]", out
