"""`tunefleet merge` of two real LoRA fine-tunes: DARE and TIES merges each write, evaluate and
register, the registry names both parents, a registered merge trains as a base, and a shape
mismatch fails before any MLflow run."""

import json
import re

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from tunefleet.cli.main import main
from tunefleet.config import load_config
from tunefleet.models.merging import merge_state_dicts
from tunefleet.models.registry import resolve_model
from tunefleet.models.tiny import build_tiny_tokenizer, tiny_llama_config
from tunefleet.pipelines.export_job import list_models
from tunefleet.pipelines.train_job import run_train_job
from tunefleet.tracking.registry import list_versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN = [
    "model.name=tiny-llama", "model.lora.r=4", "data.num_train=16", "data.num_eval=2", "data.max_length=256",
    "trainer.num_workers=1", "trainer.max_steps=2", "trainer.batch_size=8", "trainer.micro_batch_size=8",
    "trainer.lr=3e-2", "eval.max_new_tokens=2", "eval.before=false",
]
MC = [{"question": "2 + 2 =", "choices": ["4", "5", "22"], "answer": 0},
      {"question": "The reverse of 'ab' is", "choices": ["ab", "ba"], "answer": 1}]
TEXT = [{"text": "reverse the list 3 1 2 and answer 2 1 3"}, {"text": "what is 12 + 30? the answer is 42"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _other_shape_model(dest):
    """tiny-llama's tokenizer with half its hidden size: same tensor names, other shapes."""
    tok = build_tiny_tokenizer()
    cfg = tiny_llama_config(tok)
    cfg.hidden_size, cfg.intermediate_size = 32, 64
    LlamaForCausalLM(cfg).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return str(dest)


def _merge_runs(client):
    exp = client.get_experiment_by_name("tunefleet-merge")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_dare_and_ties_merges_of_two_lora_fine_tunes_evaluate_and_register(ray_cluster, home, tmp_path, capsys,
                                                                           monkeypatch):
    uri = f"sqlite:///{home}/mlflow.db"
    run_ids = []
    for name, seed, task in (("ft-a", 1, "reverse"), ("ft-b", 2, "arith")):
        res = run_train_job(load_config(None, TRAIN + [f"run.name={name}", f"trainer.seed={seed}", f"data.seed={seed}",
                                                       f"data.task={task}", f"tracking.uri={uri}"]))
        assert main(["export", res.run_id, str(tmp_path / name), "--register", name, "--tracking-uri", uri]) == 0
        run_ids.append(res.run_id)
    quiz, held = _jsonl(tmp_path / "quiz.jsonl", MC), _jsonl(tmp_path / "held.jsonl", TEXT)
    suites = ["--suite", f"mc:{quiz}", "--suite", f"ppl:{held}"]
    capsys.readouterr()

    # DARE of the two registered versions; TIES of a run id and an exported directory
    dare_out, ties_out = tmp_path / "dare", tmp_path / "ties"
    assert main(["merge", "models:/ft-a/1", "models:/ft-b/1", "--out", str(dare_out), "--method", "dare",
                 "--density", "0.5", "--seed", "3", *suites, "--register", "tiny-merged", "--tracking-uri", uri]) == 0
    assert "registered models:/tiny-merged/1" in capsys.readouterr().out
    assert main(["merge", run_ids[0], str(tmp_path / "ft-b"), "--out", str(ties_out), "--method", "ties",
                 "--density", "0.5", *suites, "--register", "tiny-merged", "--tracking-uri", uri]) == 0
    assert "registered models:/tiny-merged/2" in capsys.readouterr().out

    client = MlflowClient(uri)
    rows = {r["version"]: r for r in list_versions(client, "tiny-merged")}
    assert rows["1"]["parent"] == "models:/ft-a/1,models:/ft-b/1"
    assert rows["2"]["parent"] == f"{run_ids[0]},models:/ft-b/1"  # the export dir's lineage names its version
    table = list_models("tiny-merged", uri)
    assert "models:/ft-a/1,models:/ft-b/1" in table and f"{run_ids[0]},models:/ft-b/1" in table
    for version, out in (("1", dare_out), ("2", ties_out)):
        mv = client.get_model_version("tiny-merged", version)
        run = client.get_run(mv.run_id)
        assert mv.source == f"runs:/{mv.run_id}/merged" and run.data.tags["tunefleet.kind"] == "merge"
        assert {"eval/mc_quiz/acc", "eval/mc_quiz/acc_norm", "eval/ppl_held/word_perplexity"} <= set(run.data.metrics)
        assert mv.tags["tunefleet.objective_metric"] == "eval/mc_quiz/acc"
        assert float(mv.tags["tunefleet.objective"]) == run.data.metrics["eval/mc_quiz/acc"]
        assert rows[version]["objective"].startswith("eval/mc_quiz/acc=")
        assert "merged/MLmodel" in {a.path for a in client.list_artifacts(mv.run_id, "merged")}
        lineage = json.loads((out / "tunefleet_export.json").read_text())
        assert lineage["registered"] == f"models:/tiny-merged/{version}" and lineage["run_id"] == mv.run_id
        assert lineage["base_model"] == "tiny-llama" and len(lineage["parents"]) == 2
    assert client.get_run(rows["1"]["run_id"]).data.params["merge.seed"] == "3"

    # the written weights are the merge of the parents' full weights, and differ from each parent
    base = load_file(str(resolve_model("tiny-llama") / "model.safetensors"))
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("ft-a", "ft-b"))
    for out, method, seed in ((dare_out, "dare", 3), (ties_out, "ties", 0)):
        got = load_file(str(out / "model.safetensors"))
        want = merge_state_dicts(base, [a, b], method, density=0.5, seed=seed)
        assert all(torch.equal(got[k], want[k]) for k in want), method
        for parent in (a, b, base):
            assert any(not torch.equal(got[k], parent[k]) for k in got), method
    template = (resolve_model("tiny-llama") / "chat_template.jinja").read_text()
    assert (dare_out / "chat_template.jinja").read_text() == template

    # a registered merge is a training base: `model.name: models:/NAME/VERSION`
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    res = run_train_job(load_config(None, TRAIN + ["model.name=models:/tiny-merged/2", "run.name=ft-c",
                                                   "trainer.max_steps=1", "data.task=reverse"]))
    assert main(["export", res.run_id, str(tmp_path / "ft-c"), "--register", "ft-c"]) == 0
    [row] = list_versions(client, "ft-c")
    assert row["parent"] == "models:/tiny-merged/2" and row["run_id"] == res.run_id

    # a model of another shape fails before any work: no new MLflow run, no output directory
    before = len(_merge_runs(client))
    bad_out = tmp_path / "bad"
    assert main(["merge", "models:/ft-a/1", _other_shape_model(tmp_path / "half"), "--out", str(bad_out),
                 "--method", "ties", *suites, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert re.search(r"merge error: tensor '(lm_head|model.embed_tokens).weight': shape \[259, 32\] in parent "
                     r".*half but \[259, 64\] in base", err), err
    assert len(_merge_runs(client)) == before and not bad_out.exists()
