"""A run on shared services only, as on a cluster whose nodes share nothing but the network:
tracking on a real MLflow server (PostgreSQL store, artifacts proxied to S3), run storage
(checkpoints, eval points, sample ids) on an S3 API. A 2-worker run; its newest checkpoint
is then damaged on S3 and the rerun falls back to the one before; everything is read back
through MlflowClient and the S3 API, never from a local directory."""

import io
import json
import os

import pytest
from mlflow.tracking import MlflowClient
from tf_servers import BUCKET, s3_keys, services, skip_reason
from tf_testutil import metric_history

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
RUN = "s3-run"


@pytest.fixture(scope="module")
def svc():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with services() as s, pytest.MonkeyPatch.context() as mp:
        for k, v in s.env.items():  # before Ray starts: its workers inherit the S3 settings
            mp.setenv(k, v)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield s


@pytest.fixture(scope="module")
def cluster(svc):
    from tunefleet.cluster import init_ray, shutdown_ray

    init_ray(num_cpus=2)
    yield
    shutdown_ray()


def _cfg(svc, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Reverse: {w}", "completion": w[::-1]}) + "\n"
                            for w in ["abc", "hello", "tune", "fleet"]))
    return load_config(None, [
        "model.name=tiny-llama", "data.task=reverse", "data.num_train=32", "data.num_eval=0", "data.max_length=256",
        f"data.eval_path={held}", "trainer.batch_size=4", "trainer.micro_batch_size=2", "trainer.lr=3e-3",
        "trainer.max_steps=4", "trainer.num_workers=2", "checkpoint.every_steps=2", "trainer.log_sample_ids=true",
        "eval.every_steps=2", "eval.limit=4", "eval.max_new_tokens=4", "eval.after=true", "trainer.status_every_s=30",
        f"tracking.uri={svc.tracking_uri}", f"run.storage=s3://{BUCKET}/runs", f"run.name={RUN}"])


def _corrupt_largest(svc, prefix: str) -> str:
    s3 = svc.s3()
    objs = [o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
            if not o["Key"].endswith("manifest.json")]
    victim = max(objs, key=lambda o: o["Size"])["Key"]
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=victim)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong sha256
    s3.put_object(Bucket=BUCKET, Key=victim, Body=bytes(data))
    return victim


def test_run_on_tracking_server_and_s3_storage_survives_a_corrupt_checkpoint(svc, cluster, home, tmp_path, capfd):
    cfg = _cfg(svc, tmp_path)
    first = run_train_job(cfg)
    assert first.checkpoint == f"s3://{BUCKET}/runs/{RUN}/checkpoint_000004", first.checkpoint
    keys = s3_keys(svc, f"runs/{RUN}/")
    for want in ("checkpoint_000002/manifest.json", "checkpoint_000004/export/model.safetensors",
                 "eval/step_000000/metrics.json", "eval/step_000004/heldout.parquet", "sample_ids.jsonl"):
        assert f"runs/{RUN}/{want}" in keys, (want, keys)
    assert not (home / "runs").exists() and not list(home.glob("*.db")), "nothing may land on the local disk"

    victim = _corrupt_largest(svc, f"runs/{RUN}/checkpoint_000004/")
    capfd.readouterr()
    again = run_train_job(cfg)
    err = "".join(capfd.readouterr())
    assert again.run_id == first.run_id and again.metrics["step"] == 4
    assert "skipping unusable checkpoint" in err and "sha256" in err and os.path.basename(victim) in err, err[-3000:]
    assert "resumed from checkpoint_000002 at step 2" in err, err[-3000:]

    client = MlflowClient(svc.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    losses = metric_history(svc.tracking_uri, first.run_id, "loss")
    assert sorted(losses) == [1, 2, 3, 4]
    assert sorted(metric_history(svc.tracking_uri, first.run_id, "eval/heldout/loss")) == [0, 2, 4]
    arts = {a.path for a in client.list_artifacts(first.run_id, "eval/step_000004")}
    assert "eval/step_000004/metrics.json" in arts and "eval/step_000004/heldout.parquet" in arts
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(first.run_id, "model")}
    stored = s3_keys(svc, "mlflow/")  # the server proxies artifacts into the bucket
    assert any(k.endswith("/artifacts/model/model.safetensors") for k in stored), stored[:20]
    ids = svc.s3().get_object(Bucket=BUCKET, Key=f"runs/{RUN}/sample_ids.jsonl")["Body"].read().decode()
    steps = [json.loads(line)["step"] for line in io.StringIO(ids)]
    assert steps == [1, 2, 3, 4, 3, 4], steps  # the rerun redid steps 3 and 4 from checkpoint 2
    params = client.get_run(first.run_id).data.params
    assert params["run.storage"] == f"s3://{BUCKET}/runs"
