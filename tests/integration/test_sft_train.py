"""SFT through the real stack: Ray Train workers, FSDP2, checkpoints, MLflow."""

import pytest
from mlflow.tracking import MlflowClient
from tf_testutil import metric_history

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

pytestmark = pytest.mark.slow

BASE = [
    "model.name=tiny-llama", "data.task=reverse", "data.num_train=64", "data.num_eval=4", "data.max_length=256",
    "trainer.batch_size=8", "trainer.micro_batch_size=2", "trainer.lr=3e-3", "trainer.status_every_s=5",
    "eval.max_new_tokens=4", "eval.before=false",
]


def _cfg(home, *overrides):
    return load_config(None, BASE + [f"tracking.uri=sqlite:///{home}/mlflow.db", *overrides])


def test_two_worker_fsdp2_sft_reduces_loss_and_tracks_everything(ray_cluster, home):
    cfg = _cfg(home, "trainer.num_workers=2", "trainer.max_steps=16", "run.name=fsdp2")
    result = run_train_job(cfg)
    uri = cfg.tracking.uri
    losses = metric_history(uri, result.run_id, "loss")
    assert sorted(losses) == list(range(1, 17))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (14, 15, 16)) / 3
    assert last < 0.8 * first, (first, last)

    run = MlflowClient(uri).get_run(result.run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["trainer.num_workers"] == "2" and params["model.name"] == "tiny-llama"
    assert len(tags["dataset.train.digest"]) == 64 and tags["dataset.train.rows"] == "64"
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "eval/accuracy_after"} <= set(metrics)
    assert {"config.yaml", "model/model.safetensors", "model/config.json"} <= set(result.artifacts)
    assert '"run_id"' in result.summary_line()


def test_rerun_resumes_at_next_step_with_identical_loss(ray_cluster, home):
    steps = ["trainer.max_steps=4", "checkpoint.every_steps=2", "trainer.lr_schedule=cosine", "model.lora.r=4",
             "trainer.num_workers=2"]
    straight = run_train_job(_cfg(home, *steps, "run.name=straight"))
    crashing = _cfg(home, *steps, "run.name=crashy", "trainer.fail_at_step=2")
    with pytest.raises(Exception, match="fault injection"):
        run_train_job(crashing)
    resumed = run_train_job(crashing)  # same run name: resumes from checkpoint_000002
    assert resumed.run_id != straight.run_id
    uri = crashing.tracking.uri
    want, got = metric_history(uri, straight.run_id, "loss"), metric_history(uri, resumed.run_id, "loss")
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert abs(got[step] - want[step]) < 1e-5, (step, got[step], want[step])
