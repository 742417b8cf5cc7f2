"""`tunefleet eval` wiring: bad input fails with file:line before any model or MLflow is touched;
targets resolve; per-example Parquet; lm-eval metric names."""

import json

import pyarrow.parquet as pq
import pytest

from tunefleet.cli.main import _parser, main
from tunefleet.data.readers import DataError
from tunefleet.eval import runner
from tunefleet.eval.lm_eval_compat import metrics_of, model_args, read_task
from tunefleet.eval.targets import TargetError, resolve_target


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if anything tries to resolve a target, load a model or start MLflow."""
    def boom(*a, **k):
        raise AssertionError("touched a model / MLflow before the data was checked")

    monkeypatch.setattr("tunefleet.eval.targets.resolve_target", boom)
    monkeypatch.setattr("tunefleet.models.registry.load_model", boom)
    monkeypatch.setattr("tunefleet.tracking.Tracker.start", boom)


def test_bad_rows_exit_2_with_file_line_before_any_model(tmp_path, capsys, no_models):
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n"
                  + json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}) + "\n")
    assert main(["eval", "no-such-model", "arith:1", f"mc:{mc}"]) == 2
    err = capsys.readouterr().err
    assert f"{mc}:2: answer index 5 out of range for 2 choices" in err


def test_missing_file_and_empty_request(tmp_path, capsys, no_models):
    assert main(["eval", "tiny-llama", f"ppl:{tmp_path}/nope.jsonl"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "tiny-llama"]) == 2
    assert "at least one SUITE" in capsys.readouterr().err
    assert main(["eval", "tiny-llama", "--lm-eval", str(tmp_path / "t.yaml")]) == 2
    assert "no such lm-eval task file" in capsys.readouterr().err


def test_eval_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["eval", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("--lm-eval", "--limit", "--seed", "--max-new-tokens", "--batch-size", "--tracking-uri", "mc:PATH"):
        assert flag in out
    args = _parser().parse_args(["eval", "m", "arith:1-3", "gsm8k:x.jsonl", "--limit", "200", "--seed", "3"])
    assert args.suites == ["arith:1-3", "gsm8k:x.jsonl"] and args.limit == 200 and args.seed == 3


def test_targets(tmp_path, home):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_target(str(hf)).model_dir == str(hf.resolve()) and resolve_target(str(hf)).adapter is None
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(hf)}))
    t = resolve_target(str(adapter))
    assert (t.model_dir, t.adapter) == (str(hf), str(adapter.resolve()))
    assert resolve_target(str(adapter), base=str(hf)).model_dir == str(hf)
    with pytest.raises(TargetError, match="neither an HF model dir"):
        resolve_target(str(tmp_path))
    with pytest.raises(TargetError, match="not a model directory, adapter directory, alias"):
        resolve_target("nope")
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(TargetError, match="give --base"):
        resolve_target(str(adapter))


def test_per_example_parquet(tmp_path):
    rows = [{"id": "a", "input": "q", "reference": "4", "output": "4", "score": 1.0, "acc_norm": 0.0}]
    table = pq.read_table(runner.write_rows("mc_x", rows, tmp_path / "x.parquet"))
    assert table.column_names == ["suite", "id", "input", "reference", "output", "score", "extra"]
    row = table.to_pylist()[0]
    assert row["suite"] == "mc_x" and row["score"] == 1.0 and json.loads(row["extra"]) == {"acc_norm": 0.0}


def test_outcome_lines():
    out = runner.EvalOutcome("r1", {"arith_l1": {"exact_match": 0.25, "n": 4}})
    assert out.suite_lines() == ["arith_l1: exact_match=0.2500 n=4"]
    assert json.loads(out.summary_line()) == {"run_id": "r1", "metrics": {"eval/arith_l1/exact_match": 0.25,
                                                                          "eval/arith_l1/n": 4}}


def test_lm_eval_task_file_checks(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    yaml_path = tmp_path / "t.yaml"
    yaml_path.write_text("task: my_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: d.jsonl\n"
                         "process_results: !function utils.process\n")
    task = read_task(str(yaml_path))
    assert (task.name, task.data_files, task.rows) == ("my_task", (str(data),), 2) and len(task.digest) == 64
    yaml_path.write_text("dataset_path: json\n")
    with pytest.raises(DataError, match=r"t.yaml:1: an lm-eval task YAML needs a `task: NAME` key"):
        read_task(str(yaml_path))
    yaml_path.write_text("task: x\ndataset_kwargs:\n  data_files: {test: gone.jsonl}\n")
    with pytest.raises(DataError, match="gone.jsonl does not exist"):
        read_task(str(yaml_path))


def test_lm_eval_metric_names_and_model_args():
    res = {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25, "exact_match,strict": 1}
    assert metrics_of(res) == {"acc": 0.5, "acc_norm": 0.25, "exact_match_strict": 1.0}
    assert model_args("/m", None) == "pretrained=/m,dtype=float32"
    assert model_args("/m", "/a", "bfloat16") == "pretrained=/m,dtype=bfloat16,peft=/a"


def test_run_id_target_uses_the_export_checkpoint(tmp_path, monkeypatch):
    """An MLflow run id leads, as `tunefleet export` does, to the newest verified checkpoint's
    export/: an adapter there is served on the run's base model."""
    from types import SimpleNamespace

    import tunefleet.pipelines.export_job as export_job
    import tunefleet.pipelines.train_job as train_job

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    ckpt = tmp_path / "runs" / "r" / "checkpoint_000004"
    (ckpt / "export").mkdir(parents=True)
    (ckpt / "export" / "adapter_config.json").write_text("{}")
    cfg = SimpleNamespace(model=SimpleNamespace(name=str(base)), run=SimpleNamespace(name="r"))
    monkeypatch.setattr(export_job, "_run_and_config", lambda req: (None, None, cfg))
    monkeypatch.setattr(export_job, "choose_checkpoint", lambda run_dir, step: (4, ckpt))
    monkeypatch.setattr(train_job, "storage_path", lambda c: str(tmp_path / "runs"))
    t = resolve_target("0123456789abcdef0123456789abcdef")
    assert (t.model_dir, t.adapter, t.run_id, t.checkpoint) == (str(base), str(ckpt / "export"),
                                                                "0123456789abcdef0123456789abcdef", str(ckpt))
    (ckpt / "export" / "adapter_config.json").unlink()
    full = resolve_target("0123456789abcdef0123456789abcdef")
    assert (full.model_dir, full.adapter) == (str(ckpt / "export"), None)
