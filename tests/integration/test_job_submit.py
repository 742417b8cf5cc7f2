"""`ray job submit` against a real `ray start --head` cluster on 127.0.0.1."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tf_raynodes import BIN, start_head, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def head_node(home):
    """Start a head node on loopback; always stop it, even when the test fails."""
    cluster = start_head(num_cpus=2)
    try:
        yield cluster.dashboard, cluster.env
    finally:
        cluster.stop()


def test_job_submit_runs_sample_config(head_node, home):
    address, env = head_node
    overrides = ["model.name=tiny-llama", "data.task=reverse", "data.max_length=256", "data.num_eval=4",
                 "trainer.max_steps=3", "trainer.batch_size=4", "trainer.micro_batch_size=4", "trainer.bf16=false",
                 "eval.max_new_tokens=4", f"tracking.uri=sqlite:///{home}/mlflow.db", f"run.storage={home}/runs"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
           sys.executable, "jobs/run.py", "jobs/configs/sft_lora.yaml", *overrides]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = [line for line in res.stdout.splitlines() if line.startswith('{"run_id"')]
    assert summary, res.stdout[-3000:]
    out = json.loads(summary[-1])
    assert out["run_id"] and "loss" in out["metrics"] and "adapter/adapter_model.safetensors" in out["artifacts"]


def _job(address: str, env: dict, command: str, *args: str) -> str:
    res = subprocess.run([str(BIN / "ray"), "job", command, "--address", address, *args], env=env,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def test_ray_job_stop_checkpoints_and_resumes(head_node, home):
    """`ray job stop` (SIGTERM to the driver) ends the run after the current step with a
    checkpoint; the MLflow run is KILLED and `--resume` would continue it."""
    address, env = head_node
    uri = f"sqlite:///{home}/mlflow.db"
    overrides = ["model.name=tiny-llama", "data.task=reverse", "data.max_length=256", "trainer.max_steps=100000",
                 "trainer.batch_size=4", "trainer.micro_batch_size=4", "checkpoint.every_steps=0",
                 "trainer.status_every_s=1", "eval.before=false", "eval.after=false", f"tracking.uri={uri}",
                 f"run.storage={home}/runs", "run.name=jobstop"]
    _job(address, env, "submit", "--no-wait", "--submission-id", "tf-stop", "--working-dir", str(ROOT),
         "--runtime-env", "jobs/runtime_env.yaml", "--", sys.executable, "jobs/run.py", "jobs/configs/sft_lora.yaml",
         *overrides)
    wait_for(lambda: "[train] step" in _job(address, env, "logs", "tf-stop"), 300, "training to start")
    sent = time.time()
    _job(address, env, "stop", "tf-stop")  # returns once the job has exited
    stop_s = time.time() - sent
    assert "was stopped" in _job(address, env, "status", "tf-stop")
    logs = _job(address, env, "logs", "tf-stop")
    stopped = re.search(r"\[train\] stopped after step (\d+) \(SIGTERM\); checkpoint written", logs)
    assert stopped, logs[-3000:]
    step = int(stopped.group(1))
    assert (home / "runs" / "jobstop" / f"checkpoint_{step:06d}" / "manifest.json").is_file()
    resume = re.search(r"resume with: tunefleet run --resume (\w+)", logs)
    assert resume, logs[-3000:]
    assert MlflowClient(uri).get_run(resume.group(1)).info.status == "KILLED"
    print(f"ray job stop -> job exited cleanly after step {step}: {stop_s:.1f} s")
