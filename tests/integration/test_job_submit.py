"""`ray job submit` against a real `ray start --head` cluster on 127.0.0.1."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node(home):
    """Start a head node on loopback; always stop it, even when the test fails."""
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp = tempfile.mkdtemp(prefix="tfray", dir="/tmp")
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
           "--temp-dir", temp]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


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
