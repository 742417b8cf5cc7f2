"""Chaos: a training worker process is SIGKILLed mid-run (as by the OOM killer or a
preempted node). Ray Train restarts the group from the newest checkpoint; the run ends with
the right step count and the same per-step losses as an uninterrupted run. (A damaged newest
checkpoint, end to end, is in test_cluster_storage.py, on S3; the local fallback in
tests/unit/train/test_checkpoint_files.py.)

Recovery time (kill -> first completed step after it) is printed for bench/RESULTS.md.
"""


import pytest
from mlflow.tracking import MlflowClient

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BASE = ["model.name=tiny-llama", "data.task=reverse", "data.num_train=64", "data.max_length=256",
        "trainer.batch_size=8", "trainer.micro_batch_size=2", "trainer.lr=3e-3", "trainer.num_workers=2",
        "trainer.max_steps=6", "checkpoint.every_steps=2", "eval.before=false", "eval.after=false",
        "trainer.status_every_s=30"]


def _losses(client, run_id):
    """step -> every value logged for it, in logging order; and the logging times."""
    out = {}
    for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.timestamp):
        out.setdefault(m.step, []).append((m.value, m.timestamp / 1000))
    return out


def test_killed_worker_restarts_with_identical_losses(ray_cluster, home):
    uri = f"sqlite:///{home}/mlflow.db"
    straight = run_train_job(load_config(None, BASE + [f"tracking.uri={uri}", "run.name=straight-chaos"]))
    killed = run_train_job(load_config(None, BASE + [f"tracking.uri={uri}", "run.name=killed-chaos",
                                                     "trainer.kill_at_step=3", "trainer.max_failures=3"]))
    client = MlflowClient(uri)
    want, got = _losses(client, straight.run_id), _losses(client, killed.run_id)
    assert sorted(got) == list(range(1, 7)) and killed.metrics["step"] == 6
    assert len(got[3]) == 2, "step 3 ran before the kill and again after the restart (from checkpoint 2)"
    for step in range(1, 7):
        assert abs(got[step][-1][0] - want[step][0][0]) < 1e-4, (step, got[step], want[step])
    killed_at, recovered_at = got[3][0][1], got[3][1][1]
    print(f"recovery after SIGKILL of a worker: {recovered_at - killed_at:.1f} s (kill -> step 3 redone)")
