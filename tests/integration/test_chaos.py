"""Chaos: a training worker process is SIGKILLed mid-run (as by the OOM killer or a
preempted node). Ray Train restarts the group from the newest checkpoint; the run ends with
the right step count and the same per-step losses as an uninterrupted run. And a damaged
newest checkpoint: the rerun falls back to the one before, with a warning.

Recovery time (kill -> first completed step after it) is printed for bench/RESULTS.md.
"""

import time

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


def test_corrupt_newest_checkpoint_resumes_from_the_previous(ray_cluster, home, capfd):
    """A finished run whose newest checkpoint is then damaged (a torn upload, a bad disk):
    rerunning it skips that checkpoint with a warning and redoes the steps from the one before,
    with the same losses."""
    uri = f"sqlite:///{home}/mlflow.db"
    args = BASE + ["trainer.max_steps=4", f"tracking.uri={uri}", "run.name=corrupt-chaos", f"run.storage={home}/runs"]
    first = run_train_job(load_config(None, args))
    newest = home / "runs" / "corrupt-chaos" / "checkpoint_000004"
    victim = max((p for p in newest.iterdir() if p.is_file() and p.name != "manifest.json"),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong sha256
    victim.write_bytes(bytes(data))
    capfd.readouterr()
    started = time.time()
    again = run_train_job(load_config(None, args))
    err = "".join(capfd.readouterr())
    assert again.run_id == first.run_id and again.metrics["step"] == 4
    assert "skipping unusable checkpoint" in err and "checkpoint_000004" in err and "sha256" in err, err[-3000:]
    assert "resumed from checkpoint_000002 at step 2" in err
    losses = _losses(MlflowClient(uri), first.run_id)
    for step in (3, 4):  # logged by the first run and again after the fallback
        assert len(losses[step]) == 2 and abs(losses[step][0][0] - losses[step][1][0]) < 1e-4, (step, losses[step])
    print(f"corrupt newest checkpoint -> fallback resume, first redone step after {losses[3][-1][1] - started:.1f} s")
