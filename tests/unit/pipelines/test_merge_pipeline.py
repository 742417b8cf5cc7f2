"""pipelines/merge_job.py without Ray or a real model: fake HF dirs (config.json + safetensors
headers) for the checks that run before any work, and one linear merge end to end."""

import json
import warnings

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from tunefleet.cli.main import main
from tunefleet.cli.merge import METHOD_NAMES
from tunefleet.models.merging import METHODS, MergeError
from tunefleet.models.registry import resolve_model
from tunefleet.pipelines.merge_job import MergeRequest, base_key, prepare_merge, resolve_parent, run_merge
from tunefleet.tracking.registry import list_versions
from tunefleet.tracking.sources import RegistryError, hf_dir_in, parse_uri


def _model(path, tensors, base=None):
    """A directory that passes for an HF model: config.json, model.safetensors, a lineage file."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (path / "tokenizer_config.json").write_text("{}")
    save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(path / "model.safetensors"))
    if base is not None:
        (path / "tunefleet_export.json").write_text(json.dumps({"base_model": str(base)}))
    return str(path)


@pytest.fixture
def models(tmp_path):
    base = _model(tmp_path / "base", {"w": [[1.0, 2.0], [3.0, 4.0]], "b": [0.5]})
    return {
        "base": base,
        "a": _model(tmp_path / "a", {"w": [[3.0, 2.0], [3.0, 0.0]], "b": [0.5]}, base),
        "b": _model(tmp_path / "b", {"w": [[1.0, 4.0], [3.0, 4.0]], "b": [1.5]}, base),
        "other": _model(tmp_path / "other", {"w": [[1.0, 2.0], [3.0, 4.0]], "b": [0.5]}),
        "wide": _model(tmp_path / "wide", {"w": [[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]], "b": [0.5]}, base),
    }


def test_parents_of_different_bases_fail_naming_both(models, tmp_path):
    c = _model(tmp_path / "c", {"w": [[0.0, 0.0], [0.0, 0.0]], "b": [0.0]}, models["other"])
    with pytest.raises(MergeError, match=rf"{models['a']} is a fine-tune of .*base, {c} of .*other"):
        prepare_merge(MergeRequest((models["a"], c), str(tmp_path / "out")))


def test_a_shape_mismatch_fails_before_any_mlflow_run(models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["merge", models["a"], models["wide"], "--out", str(tmp_path / "out"), "--tracking-uri", uri])
    assert code == 2 and not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()
    want = rf"tensor 'w': shape \[2, 3\] in parent {models['wide']} but \[2, 2\] in base"
    with pytest.raises(MergeError, match=want):
        prepare_merge(MergeRequest((models["a"], models["wide"]), str(tmp_path / "out")))


def test_unrecorded_base_needs_base_and_then_is_checked(models, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(MergeError, match="no parent records its base model.*give --base"):
        prepare_merge(MergeRequest((models["other"], models["other"]), out))
    *_, base_dir, base = prepare_merge(MergeRequest((models["other"], models["a"]), out, base=models["base"]))
    assert str(base_dir) == models["base"] and base == models["base"]
    with pytest.raises(MergeError, match="--base is a fine-tune of .*other, .*a of .*base"):
        prepare_merge(MergeRequest((models["other"], models["a"]), out, base=models["other"]))


def test_bad_requests_exit_2_before_work(models, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    cases = [
        ([models["a"]], "at least two parents"),
        ([models["a"], models["b"], "--weights", "1", "2", "3"], "3 weights for 2 parents"),
        ([models["a"], models["b"], "--method", "dare", "--density", "1.5"], r"density 1.5: must be in (0, 1]"),
        ([models["a"], models["b"], "--suite", "nope"], "unknown suite 'nope'"),
        ([models["a"], str(tmp_path / "missing")], "not a model directory, adapter directory, alias"),
        ([models["a"], "models:/x/latest"], "give a registered model as models:/NAME/VERSION"),
    ]
    for argv, want in cases:
        assert main(["merge", *argv, "--out", str(tmp_path / "out")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("merge error: ") and want in err, (argv, err)
    assert main(["merge", models["a"], models["b"], "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_linear_merge_writes_tracks_and_registers_every_parent(models, tmp_path, home, monkeypatch):
    """w: tau_a = [[2, 0], [0, -4]], tau_b = [[0, 2], [0, 0]]; mean = [[1, 1], [0, -2]]
    -> [[2, 3], [3, 2]]; b: tau = [0], [1] -> 0.5 + 0.5 = 1.0."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fake dir is no transformers model: logged as plain files
        res = run_merge(MergeRequest((models["a"], models["b"]), str(tmp_path / "out"), register="m",
                                     tracking_uri=uri))
    got = load_file(str(res.out / "model.safetensors"))
    assert got["w"].tolist() == [[2.0, 3.0], [3.0, 2.0]] and got["b"].tolist() == [1.0]
    assert (res.out / "tokenizer_config.json").is_file()
    lineage = json.loads((res.out / "tunefleet_export.json").read_text())
    assert lineage["parents"] == [models["a"], models["b"]] and lineage["registered"] == "models:/m/1"
    assert lineage["kind"] == "merge" and lineage["run_id"] == res.run_id and lineage["base_model"] == models["base"]
    client = MlflowClient(uri)
    [row] = list_versions(client, "m")
    assert row["parent"] == f"{models['a']},{models['b']}" and row["run_id"] == res.run_id
    run = client.get_run(res.run_id)
    assert run.data.params["merge.method"] == "linear" and run.data.tags["tunefleet.kind"] == "merge"
    assert client.get_experiment(run.info.experiment_id).name == "tunefleet-merge"
    assert run.info.status == "FINISHED"
    # the registered merge is a model source: for training (resolve_model) and as a merge parent
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    src = resolve_model("models:/m/1")
    assert load_file(str(src / "model.safetensors"))["w"].tolist() == [[2.0, 3.0], [3.0, 2.0]]
    assert resolve_model("models:/m/1") == src and str(src).startswith(str(home / "registry"))
    parent = resolve_parent("models:/m/1")
    assert parent.label == "models:/m/1" and parent.base() == base_key(models["base"]) and parent.adapter is None


def test_cli_methods_are_the_merging_methods_and_help_shows_each_command(capsys):
    assert METHOD_NAMES == tuple(METHODS)
    for command, words in (("merge", ("--method", "ties", "dare", "models:/NAME/VERSION", "--register")),
                           ("eval", ("SUITE", "--lm-eval")), ("export", ("--register", "--checkpoint")),
                           ("models", ("name",))):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and all(w in out for w in words), (command, out)


def test_registered_uris_and_downloaded_layouts(tmp_path):
    assert parse_uri("models:/tiny-sft/3") == ("tiny-sft", "3")
    with pytest.raises(RegistryError, match="models:/NAME/VERSION"):
        parse_uri("models:/tiny-sft")
    (tmp_path / "flavour" / "model").mkdir(parents=True)
    (tmp_path / "flavour" / "model" / "config.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    assert hf_dir_in(tmp_path / "flavour") == tmp_path / "flavour" / "model"
    assert hf_dir_in(tmp_path / "plain") == tmp_path / "plain"
    with pytest.raises(RegistryError, match="no HF model directory"):
        hf_dir_in(tmp_path)


def test_jobs_merge_entrypoint_runs_the_merge_command():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "jobs" / "merge.py"
    proc = subprocess.run([sys.executable, str(script), "only-one", "--out", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "merge error: a merge needs at least two parents, got 1" in proc.stderr
