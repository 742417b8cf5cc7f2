"""In-training evaluation (the `eval:` section) through the real stack: Ray Train workers
under FSDP2, eval points at step 0, every `eval.every_steps` and the end, forgetting against
the cached base scores, per-example Parquet, eval datasets, the objective and the plots."""

import json

import pytest
from mlflow.tracking import MlflowClient
from tf_testutil import metric_history

from tunefleet.config import load_config
from tunefleet.pipelines.train_job import run_train_job

pytestmark = pytest.mark.slow


def _files(tmp_path):
    ppl = tmp_path / "general.jsonl"
    ppl.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                           ["the cat sat on the mat", "two plus two is four", "a b c d e f g"]))
    mc = tmp_path / "facts.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "The sky is", "choices": ["blue", "loud"], "answer": 0},
        {"question": "Fire is", "choices": ["cold", "hot"], "answer": 1}]))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Reverse: {w}", "completion": w[::-1]}) + "\n"
                            for w in ["abc", "hello", "tune", "fleet"]))
    return ppl, mc, held


def _cfg(home, tmp_path, name, *extra):
    ppl, mc, held = _files(tmp_path)
    return load_config(None, [
        "model.name=tiny-llama", "data.task=reverse", "data.num_train=32", "data.num_eval=0", "data.max_length=256",
        f"data.eval_path={held}", "trainer.batch_size=4", "trainer.micro_batch_size=2", "trainer.lr=3e-3",
        "trainer.max_steps=4", "trainer.num_workers=2", "model.lora.r=4", "eval.every_steps=2", "eval.limit=4",
        "eval.max_new_tokens=4", "eval.suites=[arith:1]", f"eval.general=[ppl:{ppl},mc:{mc}]",
        f"tracking.uri=sqlite:///{home}/mlflow.db", f"run.name={name}", *extra])


def test_sft_run_logs_eval_points_forgetting_objective_and_plots(ray_cluster, home, tmp_path):
    cfg = _cfg(home, tmp_path, "evalpoints")
    result = run_train_job(cfg)
    uri = cfg.tracking.uri
    for key in ("eval/arith_l1/exact_match", "eval/ppl_general/word_perplexity", "eval/mc_facts/acc",
                "eval/heldout/loss", "forgetting/ppl_general", "forgetting/mc_facts"):
        assert sorted(metric_history(uri, result.run_id, key)) == [0, 2, 4], key
    forgot = metric_history(uri, result.run_id, "forgetting/ppl_general")
    ppl = metric_history(uri, result.run_id, "eval/ppl_general/word_perplexity")
    assert forgot[0] == 0.0 and forgot[4] == pytest.approx(ppl[4] - ppl[0])
    held = metric_history(uri, result.run_id, "eval/heldout/loss")
    assert held[4] != held[0]
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.tags["tunefleet.objective_metric"] == "eval/arith_l1/exact_match"
    assert run.data.metrics["eval.objective"] == metric_history(uri, result.run_id, "eval/arith_l1/exact_match")[4]
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}.get("mlflow.data.context")
                for d in run.inputs.dataset_inputs}
    assert contexts["eval_ppl_general"] == "eval" and contexts["eval_heldout"] == "eval"
    assert {"plots/forgetting.png", "plots/eval_curves.png", "eval/step_000004/arith_l1.parquet",
            "eval/step_000000/ppl_general.parquet", "eval/step_000004/metrics.json"} <= set(result.artifacts), \
        result.artifacts
    assert result.metrics["eval/arith_l1/exact_match"] == run.data.metrics["eval.objective"]

    # Same base, same data: the general suites' base scores come from the cache (not rescored
    # at step 0), and the whole run repeats exactly (greedy, seeded).
    again = run_train_job(_cfg(home, tmp_path, "evalpoints-again"))
    for key in ("eval/arith_l1/exact_match", "eval/ppl_general/word_perplexity", "eval/heldout/loss",
                "forgetting/ppl_general"):
        a, b = metric_history(uri, result.run_id, key), metric_history(uri, again.run_id, key)
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), key
    assert "eval/step_000000/ppl_general.parquet" not in set(again.artifacts)  # cached, not rescored
