"""Two Ray instances on one machine must not interfere (a user's demo beside `make test`).

An unrelated cluster (its own `ray start --head`, its own temp dir) stays up while the test
helpers start and stop a cluster of their own and while a tiny `tunefleet run` starts a
local cluster of its own: the unrelated raylet must survive, and the run must not attach to
the unrelated cluster or trip over it ("Found multiple active Ray instances").
"""

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest
from tf_raynodes import BIN, start_head

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def unrelated():
    cluster = start_head(num_cpus=1)
    try:
        yield cluster
    finally:
        cluster.stop()


def _raylets(cluster) -> list[int]:
    return [p.pid for p in cluster.processes() if p.name() == "raylet"]


def test_helpers_and_a_run_leave_an_unrelated_cluster_alone(unrelated, home):
    raylets = _raylets(unrelated)
    assert raylets, "the unrelated cluster has no raylet"

    # The chaos/elastic helpers: a cluster of our own with a second node, stopped again.
    ours = start_head(num_cpus=1)
    ours.add_node(num_cpus=1)
    ours_procs = ours.processes()
    assert not {p.pid for p in ours_procs} & {p.pid for p in unrelated.processes()}
    ours.stop()
    assert not [p for p in ours_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert all(psutil.pid_exists(pid) for pid in raylets), "stopping our cluster killed the unrelated raylet"

    # A tiny run with no RAY_ADDRESS: it must start (and use) a cluster of its own.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["TUNEFLEET_HOME"] = str(home)
    overrides = ["model.name=tiny-llama", "data.task=reverse", "data.max_length=256", "trainer.max_steps=2",
                 "trainer.batch_size=4", "trainer.micro_batch_size=4", "trainer.bf16=false", "eval.before=false",
                 "eval.after=false", f"tracking.uri=sqlite:///{home}/mlflow.db", f"run.storage={home}/runs"]
    res = subprocess.run([str(BIN / "tunefleet"), "run", "jobs/configs/sft_lora.yaml", *overrides], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "multiple active Ray instances" not in out, out[-4000:]
    summary = json.loads([line for line in res.stdout.splitlines() if line.startswith('{"run_id"')][-1])
    assert summary["metrics"]["loss"] > 0
    assert all(psutil.pid_exists(pid) for pid in raylets), "the run killed the unrelated raylet"
    # The run's own cluster is gone with it; nothing of it attached to the unrelated one.
    jobs = subprocess.run([str(BIN / "ray"), "list", "jobs", "--address", unrelated.dashboard, "--format", "json"],
                          env=unrelated.env, capture_output=True, text=True, timeout=60)
    assert jobs.returncode == 0, jobs.stderr[-2000:]
    # (`ray list` prints this instead of an empty JSON list.)
    assert jobs.stdout.strip() == "No resource in the cluster", "the run attached to the unrelated cluster"
