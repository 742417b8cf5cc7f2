"""The data steps of a self-play iteration without Ray: gold rows, prompts that do not fit
the context, and an iteration that builds nothing stopping with its counts."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunefleet.config import load_config
from tunefleet.pipelines.selfplay_data import Gold, NoTrainingData, build, fitting_gold, gold_rows

BASE = ["model.name=tiny-llama", "data.task=arith", "data.level=1", "eval.suites=[arith:1]"]


def _generated(tmp_path, samples: list[list[str]]) -> dict:
    path = tmp_path / "generated.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"p{i}", "samples": s} for i, s in enumerate(samples)]), path)
    return {"path": str(path)}


def test_gold_rows_come_from_the_task_or_a_file_and_are_subsampled(tmp_path):
    cfg = load_config(None, BASE + ["algorithm.type=spin", "selfplay.num_prompts=5"])
    rows = gold_rows(cfg)
    assert len(rows) == 5 and all(r.response == r.answer and r.prompt for r in rows)
    assert rows == gold_rows(cfg)  # deterministic
    f = tmp_path / "gsm.jsonl"
    f.write_text('{"question": "What is 2+2?", "answer": "2+2=4\\n#### 4"}\n')
    cfg = load_config(None, BASE + ["algorithm.type=spin", "data.task=null", f"data.path={f}"])
    assert gold_rows(cfg) == [Gold("What is 2+2?", "2+2=4\n#### 4", "2+2=4\n#### 4")]


def test_an_iteration_that_accepts_nothing_stops_with_the_counts(tmp_path):
    cfg = load_config(None, BASE + ["algorithm.type=rft", "algorithm.include_gold=false",
                                    "selfplay.samples_per_prompt=2"])
    gold = [Gold("What is 1 + 2?", "3", "3"), Gold("What is 2 + 2?", "4", "4")]
    generated = _generated(tmp_path, [["5", "I think 7"], ["9", "no idea"]])
    with pytest.raises(NoTrainingData, match=r"iteration 0: no usable training rows from 2 prompts .*accepted 0"):
        build(cfg, None, gold, generated, tmp_path / "train.parquet", 0)
    assert not (tmp_path / "train.parquet").exists()  # nothing written, nothing trained
    ok = _generated(tmp_path, [["The answer is 3", "3"], ["9", "4"]])
    record = build(cfg, None, gold, ok, tmp_path / "train.parquet", 0)
    assert record["counts"]["kept"] == 3 and record["counts"]["accepted"] == 3
    assert pq.read_table(record["path"]).to_pylist() == [
        {"prompt": "What is 1 + 2?", "completion": "The answer is 3"}, {"prompt": "What is 1 + 2?", "completion": "3"},
        {"prompt": "What is 2 + 2?", "completion": "4"}]


def test_gold_prompts_longer_than_the_context_are_skipped(capsys):
    from tunefleet.models.registry import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("tiny-llama"))
    cfg = load_config(None, BASE + ["algorithm.type=spin", "rollout.max_model_len=128", "selfplay.max_new_tokens=32"])
    short, long = Gold("hi", "x", "x"), Gold("word " * 200, "x", "x")
    assert fitting_gold(cfg, [short, long, short], tok) == [short, short]
    assert "skipped 1 of 3 gold prompts longer than 96 tokens" in capsys.readouterr().out
    with pytest.raises(NoTrainingData, match="no gold prompt fits"):
        fitting_gold(cfg, [long], tok)
