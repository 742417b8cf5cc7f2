"""Preemption: SIGTERM to a running `tunefleet run` finishes the current step, writes a
checkpoint and exits cleanly; `tunefleet run --resume RUN_ID` continues from there into the
same MLflow run, and every step is logged exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
STEPS = 400
ARGS = ["model.name=tiny-llama", "data.task=reverse", "data.num_train=64", "data.max_length=256",
        "trainer.batch_size=4", "trainer.micro_batch_size=4", f"trainer.max_steps={STEPS}", "checkpoint.every_steps=0",
        "trainer.status_every_s=0.5", "eval.before=false", "eval.after=false", "run.name=preempted"]


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "tunefleet.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def _summary(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith('{"run_id"')][-1])


def test_sigterm_checkpoints_and_resume_continues_the_same_run(home):
    uri = f"sqlite:///{home}/mlflow.db"
    proc, seen = _cli("run", *ARGS, f"tracking.uri={uri}"), []
    for line in proc.stdout:  # wait until training is under way, then preempt it
        seen.append(line)
        if "[train] step" in line:
            break
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=300)[0]
    stop_s = time.time() - sent
    assert proc.returncode == 0, out[-3000:]
    first = _summary(out)
    stopped_at = int(first["metrics"]["step"])
    assert first["metrics"]["stopped"] == 1.0 and 0 < stopped_at < STEPS, out[-2000:]
    assert f"resume with: tunefleet run --resume {first['run_id']}" in out
    client = MlflowClient(uri)
    assert client.get_run(first["run_id"]).info.status == "KILLED"

    started = time.time()
    resumed = _cli("run", "--resume", first["run_id"], "--tracking-uri", uri)
    out2 = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, out2[-3000:]
    assert f"resumed from checkpoint_{stopped_at:06d} at step {stopped_at}" in out2
    second = _summary(out2)
    assert second["run_id"] == first["run_id"] and second["metrics"]["step"] == STEPS
    steps = [m.step for m in client.get_metric_history(first["run_id"], "loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), "a step was skipped or logged twice"
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    print(f"SIGTERM -> clean exit: {stop_s:.1f} s; resume -> finished: {time.time() - started:.1f} s")
