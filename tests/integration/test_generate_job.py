"""`tunefleet generate`: prompts -> vLLM pool (with a LoRA adapter) -> Parquet + MLflow lineage."""

import json

import pyarrow.parquet as pq
import pytest
import torch

from tunefleet.models import apply_lora, load_model, save_adapter
from tunefleet.models.registry import resolve_model
from tunefleet.pipelines.generate_job import GenerateRequest, run_generate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_generate_with_adapter_writes_parquet_and_lineage(ray_cluster, home, tmp_path):
    from mlflow.tracking import MlflowClient

    base = str(resolve_model("tiny-llama"))
    torch.manual_seed(0)
    peft = apply_lora(load_model(base), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    adapter = save_adapter(peft, tmp_path / "adapter")
    prompts = tmp_path / "prompts.jsonl"
    texts = ["What is 2 + 3?", "Name a colour.", "Count to three."]
    prompts.write_text("".join(json.dumps({"prompt": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    uri = f"sqlite:///{home}/mlflow.db"
    req = GenerateRequest("tiny-llama", str(prompts), str(tmp_path / "gen.parquet"), adapter=str(adapter), n=2,
                          max_tokens=6, source_run_id="trainrun42", tracking_uri=uri)
    result, run_id = run_generate(req)
    table = pq.read_table(tmp_path / "gen.parquet")
    assert result.rows == table.num_rows == 3 and table.column("prompt").to_pylist() == texts
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["samples"]) == 2 and all(len(t) == len(lp) > 0 for t, lp in zip(row["token_ids"], row["logprobs"]))
    assert row["version"] == 1  # the adapter sync made policy version 1
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["dataset.gen.source_run_id"] == "trainrun42" and tags["dataset.gen.policy_version"] == "1"
    assert tags["dataset.gen.digest"] == result.digest
