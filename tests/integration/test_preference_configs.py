"""Every preference sample config runs end to end with tiny-llama (Ray Train, MLflow)."""

import json
from pathlib import Path

import pytest
from tf_testutil import metric_history

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.name=tiny-llama", "data.task=arith", "data.num_train=32", "data.num_eval=4", "trainer.max_steps=3",
        "trainer.batch_size=4", "trainer.micro_batch_size=2", "trainer.bf16=false", "eval.max_new_tokens=4",
        "checkpoint.every_steps=0", "trainer.status_every_s=30"]


@pytest.mark.parametrize("name", ["dpo", "simpo", "orpo", "kto", "reward_model"])
def test_sample_config_runs_with_tiny_llama(ray_cluster, home, name):
    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml", TINY + [f"tracking.uri=sqlite:///{home}/mlflow.db"])
    result = run_train_job(cfg)
    losses = metric_history(cfg.tracking.uri, result.run_id, "loss")
    assert sorted(losses) == [1, 2, 3]
    if name != "kto":
        assert "accuracy" in result.metrics and "rewards/margin" in result.metrics
    exported = "adapter/adapter_model.safetensors" if cfg.model.lora else "model/model.safetensors"
    assert exported in result.artifacts


def test_preference_file_with_heldout_pairs_and_live_reference(ray_cluster, home, tmp_path):
    pairs = [{"prompt": f"Say {w}", "chosen": w, "rejected": w[::-1] + "?"} for w in
             ("apple", "river", "stone", "cloud", "tiger", "melon", "piano", "frost")]
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    held.write_text("\n".join(json.dumps(p) for p in pairs[:4]) + "\n")
    cfg = load_config(ROOT / "jobs" / "configs" / "dpo.yaml", [
        "model.name=tiny-llama", "data.task=null", f"data.path={train}", f"data.eval_path={held}",
        "reference.mode=live", "trainer.num_workers=2", "trainer.max_steps=2", "trainer.batch_size=4",
        "trainer.micro_batch_size=2", "trainer.bf16=false", f"tracking.uri=sqlite:///{home}/mlflow.db"])
    result = run_train_job(cfg)
    assert 0.0 <= result.metrics["eval/preference_accuracy_before"] <= 1.0
    assert "eval/preference_accuracy_after" in result.metrics
    assert result.metrics["loss"] > 0


@pytest.mark.parametrize("name", ["kto", "reward_model"])
def test_eval_path_is_scored_at_every_eval_point(ray_cluster, home, tmp_path, name):
    """KTO and reward models ignored data.eval_path before; now its rows are the `heldout` suite."""
    words = ("apple", "river", "stone", "cloud")
    rows = ([{"prompt": f"Say {w}", "completion": w, "label": i % 2 == 0} for i, w in enumerate(words)]
            if name == "kto" else [{"prompt": f"Say {w}", "chosen": w, "rejected": w[::-1]} for w in words])
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml", TINY + [
        f"data.eval_path={held}", "eval.every_steps=2", "eval.before=false", "trainer.max_steps=4",
        f"tracking.uri=sqlite:///{home}/mlflow.db"])
    result = run_train_job(cfg)
    key = "eval/heldout/loss" if name == "kto" else "eval/heldout/preference_accuracy"
    assert sorted(metric_history(cfg.tracking.uri, result.run_id, key)) == [2, 4]
    assert result.metrics["eval.objective"] == result.metrics[key]


def test_reward_model_scores_rows_into_parquet(ray_cluster, home, tmp_path):
    import pyarrow.parquet as pq

    from tunefleet.eval.reward_scorer import score_file

    cfg = load_config(ROOT / "jobs" / "configs" / "reward_model.yaml",
                      TINY + ["model.lora.r=4", "eval.before=false", f"tracking.uri=sqlite:///{home}/mlflow.db"])
    result = run_train_job(cfg)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "2+2?", "completion": "4"}\n{"prompt": "2+2?", "completion": "5"}\n')
    out = tmp_path / "rewards.parquet"
    assert score_file(str(Path(result.checkpoint) / "export"), str(rows), str(out)) == 2
    table = pq.read_table(out)
    assert table.column_names == ["prompt", "response", "reward"] and table.num_rows == 2
    assert all(isinstance(v, float) for v in table.column("reward").to_pylist())
