"""`tunefleet export`'s choices without Ray: which checkpoint, rebuilding export/, lineage tags,
the `tunefleet models` table."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunefleet.models import apply_lora, load_model, resolve_model
from tunefleet.models.checkpoint import write_manifest
from tunefleet.models.export import ExportError
from tunefleet.pipelines.export_job import choose_checkpoint, parent_of, rebuild_export
from tunefleet.tracking import registry


def _ckpt(run_dir, step, export=True, weights=b"w"):
    d = run_dir / f"checkpoint_{step:06d}"
    d.mkdir(parents=True)
    (d / "weights.safetensors").write_bytes(weights)
    if export:
        (d / "export").mkdir()
        (d / "export" / "adapter_config.json").write_text("{}")
    write_manifest(d)
    return d


def test_default_is_the_newest_verified_checkpoint_with_an_export(tmp_path):
    _ckpt(tmp_path, 2, export=False)
    good = _ckpt(tmp_path, 4)
    bad = _ckpt(tmp_path, 6)
    (bad / "weights.safetensors").write_bytes(b"x")  # same size, other bytes: sha256 mismatch
    (tmp_path / "checkpoint_000008").mkdir()  # no manifest: a half-written checkpoint
    assert choose_checkpoint(tmp_path, None) == (4, good)  # 6 is corrupt, 8 incomplete
    with pytest.raises(ExportError, match=r"refusing checkpoint 6: corrupt: .*sha256 mismatch.*4 \(ok\)"):
        choose_checkpoint(tmp_path, 6)
    with pytest.raises(ExportError, match=r"no checkpoint 5 .*2 \(rebuild\); 4 \(ok\); 6 \(corrupt"):
        choose_checkpoint(tmp_path, 5)
    assert choose_checkpoint(tmp_path, 2)[0] == 2  # only trainable weights: rebuildable


def test_without_any_export_the_newest_rebuildable_one_is_chosen_and_none_is_refused(tmp_path):
    _ckpt(tmp_path, 1, export=False)
    _ckpt(tmp_path, 3, export=False)
    assert choose_checkpoint(tmp_path, None)[0] == 3
    with pytest.raises(ExportError, match="no exportable checkpoint .*: none"):
        choose_checkpoint(tmp_path / "elsewhere", None)


def test_rebuilt_adapter_holds_the_checkpoint_weights(tmp_path):
    """weights.safetensors names tensors as TokenLogpModel does (`lm.` + PEFT names)."""
    base = resolve_model("tiny-llama")
    torch.manual_seed(3)
    peft = apply_lora(load_model(base), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    weights = {f"lm.{n}": torch.randn_like(p) for n, p in peft.named_parameters() if p.requires_grad}
    d = tmp_path / "checkpoint_000005"
    d.mkdir()
    save_file(weights, str(d / "weights.safetensors"))
    lora = SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))
    out = rebuild_export(d, SimpleNamespace(model=SimpleNamespace(lora=lora)), base, tmp_path / "export")
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert len(saved) == len(weights) == 8  # 2 layers x (q, v) x (A, B)
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert torch.equal(saved[key], weights["lm.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"])
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


def test_parent_is_the_registered_version_a_run_started_from(tmp_path):
    assert parent_of("tiny-llama", resolve_model("tiny-llama")) == "tiny-llama"
    (tmp_path / "tunefleet_export.json").write_text(json.dumps({"registered": "models:/tiny-sft/3"}))
    assert parent_of(str(tmp_path), tmp_path) == "models:/tiny-sft/3"
    assert parent_of("models:/x/1", tmp_path) == "models:/x/1"


def test_register_twice_makes_versions_with_lineage_and_lists_them(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.set_tag(run.info.run_id, "dataset.train.digest", "ab" * 32)
    client.log_metric(run.info.run_id, "eval/accuracy_after", 0.75, step=3)
    client.log_text(run.info.run_id, "x", "exported/checkpoint_000003/x.txt")
    run = client.get_run(run.info.run_id)
    tags = registry.lineage_tags(run, 3, "tiny-llama")
    assert tags == {"tunefleet.run_id": run.info.run_id, "tunefleet.checkpoint_step": "3",
                    "tunefleet.dataset_digests": json.dumps({"train": "ab" * 32}), "tunefleet.parent": "tiny-llama",
                    "tunefleet.objective_metric": "eval/accuracy_after", "tunefleet.objective": "0.75"}
    source = f"runs:/{run.info.run_id}/exported/checkpoint_000003"
    v1 = registry.register_version(client, "m", source, run.info.run_id, tags)
    v2 = registry.register_version(client, "m", source, run.info.run_id, {**tags, "tunefleet.parent": "models:/m/1"})
    assert (v1.version, v2.version) == (1, 2)
    rows = registry.list_versions(client, "m")
    assert [(r["version"], r["parent"], r["step"], r["objective"]) for r in rows] == [
        ("1", "tiny-llama", "3", "eval/accuracy_after=0.75"), ("2", "models:/m/1", "3", "eval/accuracy_after=0.75")]
    table = registry.format_table(rows).splitlines()
    assert table[0].split() == list(registry.COLUMNS) and run.info.run_id in table[2]
    assert registry.list_versions(client, "other") == [] and registry.format_table([]) == "no registered models"
