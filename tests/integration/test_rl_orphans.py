"""Nothing outlives its job: a GRPO driver SIGKILLed mid-run (after its pool was lost and
rebuilt by the trainer) leaves no tunefleet actor and no engine process on its cluster.

Runs on a cluster of its own (`ray start --head`, tests/tf_raynodes.py), so that what is
left afterwards is this run's alone. The driver, and the chaos script that kills its pool,
are subprocesses attached to that cluster with its auth token."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tf_raynodes import BIN, start_head

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
POOL = "rl-orphans-rollout"
OURS = ("RolloutPool", "VLLMEngine", "PoolKeeper", "RayTrainWorker", "RunControl")
DRIVER = """
from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

if __name__ == "__main__":
    run_train_job(load_config({config!r}, {args!r}))
"""
# Waits for two steps, kills the pool (the trainer rebuilds it), waits for two more steps.
CHAOS = """
import time, ray
from ray.util.state import list_actors

def pool():  # named actors live in their job's namespace: look it up
    [a] = list_actors(address={dashboard!r}, filters=[("name", "=", {pool!r}), ("state", "=", "ALIVE")])
    return ray.get_actor({pool!r}, namespace=a.ray_namespace)

def version():
    try:
        return ray.get(pool().status.remote(), timeout=5)["version"]
    except Exception:
        return -1

def wait_for(v, timeout=400):
    deadline = time.time() + timeout
    while version() < v:
        assert time.time() < deadline, f"pool never reached version {{v}}"
        time.sleep(0.5)

ray.init(address={gcs!r}, log_to_driver=False)
wait_for(2)
before = version()
ray.kill(pool())
print("pool killed", flush=True)
time.sleep(2)
wait_for(before + 2)  # steps trained on the rebuilt pool
print("rebuilt pool serves version", version(), flush=True)
"""
ARGS = ["model.name=tiny-llama", "data.num_train=64", "data.num_eval=4", "trainer.bf16=false",
        "algorithm.max_new_tokens=8", "algorithm.group_size=4", "trainer.batch_size=8", "trainer.micro_batch_size=8",
        "rollout.dtype=float32", "rollout.max_model_len=256", "eval.before=false", "eval.after=false",
        "checkpoint.every_steps=0", "trainer.status_every_s=30", "trainer.max_steps=100000", "run.name=rl-orphans",
        "rewards=[{type: format, params: {pattern: '[0-9]'}}]"]


def _alive_actors(cluster) -> list[str]:
    out = subprocess.run([str(BIN / "ray"), "list", "actors", "--address", cluster.dashboard, "--format", "json",
                          "--filter", "state=ALIVE", "--limit", "1000"],
                         env=cluster.env, capture_output=True, text=True, timeout=60)
    if out.stdout.strip().startswith("No resource"):
        return []
    assert out.returncode == 0, out.stderr[-2000:]
    return [a["class_name"] for a in json.loads(out.stdout) if any(n in a["class_name"] for n in OURS)]


def _actor_processes(cluster) -> list[str]:
    """This cluster's processes (workers carry their actor's class in their title) that run
    a tunefleet actor, a vLLM engine among them."""
    found = []
    for proc in cluster.processes():
        try:
            title = " ".join(proc.cmdline())
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
        if any(n in title for n in OURS):
            found.append(f"{proc.pid}: {title[:80]}")
    return found


def test_killed_driver_leaves_no_actor_or_engine_behind(home, tmp_path):
    cluster = start_head(num_cpus=2)
    driver = None
    try:
        env = {**cluster.env, "RAY_ADDRESS": cluster.gcs}  # the cluster's env: TUNEFLEET_HOME, auth token
        script = tmp_path / "driver.py"
        config = str(ROOT / "jobs" / "configs" / "grpo_arith.yaml")
        script.write_text(DRIVER.format(config=config, args=ARGS + [f"tracking.uri=sqlite:///{home}/mlflow.db"]))
        log = open(tmp_path / "driver.log", "w")
        driver = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
        chaos = CHAOS.format(pool=POOL, gcs=cluster.gcs, dashboard=cluster.dashboard)
        chaos = subprocess.run([sys.executable, "-c", chaos], env=env, capture_output=True, text=True, timeout=800)
        driver_log = (tmp_path / "driver.log").read_text
        assert chaos.returncode == 0, (chaos.stdout + chaos.stderr)[-3000:] + driver_log()[-3000:]
        running = _actor_processes(cluster)
        assert any("VLLMEngine" in p for p in running) and any("RolloutPool" in p for p in running), running
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        killed = time.time()
        while time.time() < killed + 60 and (_alive_actors(cluster) or _actor_processes(cluster)):
            time.sleep(2.0)
        actors, procs = _alive_actors(cluster), _actor_processes(cluster)
        print(f"{time.time() - killed:.1f} s after the driver's SIGKILL, left: {actors} {procs}")
        assert not actors and not procs, (actors, procs)
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        cluster.stop()
