"""`ray job submit` through the real CLI on a two-node cluster on 127.0.0.1 (`ray start --head`
plus `ray start --address`, separate temp dirs, one CPU each, so a 2-worker run spans both),
with tracking on the MLflow server and run storage on the S3 API of tests/tf_servers.py, as
on a cluster whose nodes share nothing but the network."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tf_raynodes import BIN, start_head, wait_for
from tf_servers import BUCKET, s3_keys, services, skip_reason
from tf_testutil import metric_history

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def svc():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with services() as s:
        yield s


@pytest.fixture
def two_nodes(svc, home, monkeypatch):
    """Head (1 CPU) + a worker node (1 CPU); both get the S3 settings a node would have from
    its environment (a Secret on Kubernetes). Always stopped, even when the test fails."""
    for k, v in svc.env.items():
        monkeypatch.setenv(k, v)
    cluster = start_head(num_cpus=1)
    try:
        cluster.add_node(num_cpus=1)
        yield cluster
    finally:
        cluster.stop()


def _job(cluster, command: str, *args: str, timeout: int = 300) -> str:
    res = subprocess.run([str(BIN / "ray"), "job", command, "--address", cluster.dashboard, *args], env=cluster.env,
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr  # the job's logs come on both (Ray's own lines on stderr)


def _submit(cluster, *args: str, wait: bool = True, submission_id: str | None = None) -> str:
    opts = ([] if wait else ["--no-wait"]) + (["--submission-id", submission_id] if submission_id else [])
    return _job(cluster, "submit", *opts, "--working-dir", str(ROOT), "--runtime-env", "jobs/runtime_env.yaml",
                "--", sys.executable, "jobs/run.py", *args, timeout=600)


def _worker_nodes(cluster) -> set[str]:
    """Nodes the job's Ray Train workers ran on (the state API keeps finished actors a while)."""
    res = subprocess.run([str(BIN / "ray"), "list", "actors", "--address", cluster.dashboard, "--detail", "--format",
                          "json", "--filter", "class_name=RayTrainWorker", "--limit", "1000"], env=cluster.env,
                         capture_output=True, text=True, check=True, timeout=120)
    return {a["node_id"] for a in json.loads(res.stdout)}


def _summary(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith('{"run_id"')]
    assert lines, out[-3000:]
    return json.loads(lines[-1])


TINY = ["model.name=tiny-llama", "data.task=reverse", "data.max_length=256", "trainer.batch_size=4",
        "trainer.micro_batch_size=2", "trainer.num_workers=2", "trainer.bf16=false"]


def test_job_submit_runs_two_workers_across_two_nodes(two_nodes, svc):
    out = _submit(two_nodes, "jobs/configs/sft_lora.yaml", *TINY, "data.num_eval=4", "trainer.max_steps=3",
                  "eval.max_new_tokens=4", f"tracking.uri={svc.tracking_uri}", f"run.storage=s3://{BUCKET}/jobs")
    assert len(_worker_nodes(two_nodes)) == 2, "the two training workers did not span both nodes"
    summary = _summary(out)
    assert "loss" in summary["metrics"] and "adapter/adapter_model.safetensors" in summary["artifacts"]
    client = MlflowClient(svc.tracking_uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["trainer.num_workers"] == "2"
    assert sorted(metric_history(svc.tracking_uri, summary["run_id"], "loss")) == [1, 2, 3]
    name = run.data.tags["tunefleet.run_name"]
    assert f"jobs/{name}/checkpoint_000003/manifest.json" in s3_keys(svc, f"jobs/{name}/")


def test_ray_job_stop_checkpoints_and_the_resumed_job_finishes(two_nodes, svc):
    """`ray job stop` (SIGTERM to the driver) ends the run after the current step with a
    checkpoint on S3 and the MLflow run KILLED; a resubmitted `--resume` continues it into the
    same run, every step logged exactly once."""
    uri = svc.tracking_uri
    _submit(two_nodes, "jobs/configs/sft_lora.yaml", *TINY, "trainer.max_steps=100000", "checkpoint.every_steps=0",
            "trainer.status_every_s=1", "eval.before=false", "eval.after=false", f"tracking.uri={uri}",
            f"run.storage=s3://{BUCKET}/jobs", "run.name=jobstop", wait=False, submission_id="tf-stop")
    wait_for(lambda: "[train] step" in _job(two_nodes, "logs", "tf-stop"), 300, "training to start")
    sent = time.time()
    _job(two_nodes, "stop", "tf-stop")  # returns once the job has exited
    stop_s = time.time() - sent
    assert "was stopped" in _job(two_nodes, "status", "tf-stop")
    logs = _job(two_nodes, "logs", "tf-stop")
    stopped = re.search(r"\[train\] stopped after step (\d+) \(SIGTERM\); checkpoint written", logs)
    assert stopped, logs[-3000:]
    step = int(stopped.group(1))
    assert f"jobs/jobstop/checkpoint_{step:06d}/manifest.json" in s3_keys(svc, "jobs/jobstop/")
    resume = re.search(r"resume with: tunefleet run --resume (\w+)", logs)
    assert resume, logs[-3000:]
    run_id = resume.group(1)
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"

    out = _submit(two_nodes, "--resume", run_id, "--tracking-uri", uri, f"trainer.max_steps={step + 2}")
    assert f"resumed from checkpoint_{step:06d} at step {step}" in out, out[-3000:]
    assert _summary(out)["run_id"] == run_id
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, step + 3)), "a step was skipped or logged twice"
    print(f"ray job stop -> job exited cleanly after step {step}: {stop_s:.1f} s")
