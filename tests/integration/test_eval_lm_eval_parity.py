"""The same local multiple-choice and perplexity data through lm-evaluation-harness's `hf` model
and through `tunefleet eval`: equal accuracies, perplexities within 1%. The harness tasks run
inside the same `tunefleet eval` (--lm-eval), so this also checks they are logged like our suites."""

import json

import pytest

from tunefleet.eval.runner import EvalRequest, run_eval

pytest.importorskip("lm_eval", reason="lm-eval (the `test` extra) is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MC = [("What is 2 + 2?", ["4", "five", "22"], 0), ("The sky is", ["blue", "green", "made of cheese"], 0),
      ("Capital of France:", ["Paris", "Rome", "Berlin", "Madrid"], 0), ("Opposite of hot ", ["cold", "warm"], 0),
      ("3 x 3 =", ["6", "9", "33"], 1), ("A cat says", ["woof", "meow", "moo"], 1),
      ("Water freezes at", ["100 degrees", "0 degrees"], 1), ("The first letter is", ["b", "z", "a"], 2)]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is a short text.",
         "Numbers: 1, 2, 3, 4, 5 and six.", "A longer paragraph\nwith a newline and   extra spaces.",
         "Ünïcödé bytes count différently.", "End."]
MC_YAML = """task: tf_parity_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
PPL_YAML = """task: tf_parity_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


@pytest.fixture
def data(tmp_path):
    mc, ppl = tmp_path / "mc.jsonl", tmp_path / "held.jsonl"
    mc.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MC))
    ppl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (tmp_path / "mc.yaml").write_text(MC_YAML.format(path=mc))
    (tmp_path / "ppl.yaml").write_text(PPL_YAML.format(path=ppl))
    return tmp_path


def test_tunefleet_and_lm_eval_agree_and_both_are_logged(home, data, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tunefleet.models.registry import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model_dir = str(resolve_model("tiny-llama"))  # a random model saved as a plain HF directory
    uri = f"sqlite:///{home}/mlflow.db"
    req = EvalRequest(model_dir, (f"mc:{data}/mc.jsonl", f"ppl:{data}/held.jsonl"),
                      (str(data / "mc.yaml"), str(data / "ppl.yaml")), tracking_uri=uri)
    out = run_eval(req)
    ours_mc, theirs_mc = out.metrics["mc_mc"], out.metrics["tf_parity_mc"]
    assert ours_mc["n"] == 8 and (ours_mc["acc"], ours_mc["acc_norm"]) == (theirs_mc["acc"], theirs_mc["acc_norm"])
    ours, theirs = out.metrics["ppl_held"], out.metrics["tf_parity_ppl"]
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[key] == pytest.approx(theirs[key], rel=0.01), key
    # A random model's byte perplexity is near the vocab size: a real number, not 1 or inf.
    assert 50 < ours["byte_perplexity"] < 5000

    client = MlflowClient(uri)
    run = client.get_run(out.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "tunefleet-eval"
    for key in ("eval/mc_mc/acc", "eval/mc_mc/acc_norm", "eval/ppl_held/word_perplexity",
                "eval/tf_parity_mc/acc", "eval/tf_parity_ppl/word_perplexity"):
        assert run.data.metrics[key] == pytest.approx(out.flat_metrics()[key]), key
    files = {a.path for a in client.list_artifacts(out.run_id, "eval")}
    assert files == {f"eval/{n}.parquet" for n in ("mc_mc", "ppl_held", "tf_parity_mc", "tf_parity_ppl")}
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"mc_mc", "ppl_held", "tf_parity_mc", "tf_parity_ppl"}
    assert all({t.key: t.value for t in d.tags}["mlflow.data.context"] == "eval" for d in inputs.values())
    assert run.data.tags["dataset.mc_mc.rows"] == "8" and run.data.tags["dataset.tf_parity_mc.rows"] == "8"


def test_loglikelihood_suites_are_deterministic(home, data):
    from tunefleet.models.registry import resolve_model

    req = EvalRequest(str(resolve_model("tiny-llama")), (f"mc:{data}/mc.jsonl", f"ppl:{data}/held.jsonl"), seed=3)
    a, b = run_eval(req, track=False), run_eval(req, track=False)
    assert a.metrics == b.metrics and a.rows == b.rows
    assert [r["output"] for r in a.rows["mc_mc"]] == [r["output"] for r in b.rows["mc_mc"]]
