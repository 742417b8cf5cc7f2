"""Command-line overrides of the data source replace the config file's own one."""

import pytest

from tunefleet.config import ConfigError, apply_overrides, load_config

TASK_FILE = """
model: {name: tiny-llama}
data: {task: arith, max_length: 64}
trainer: {max_steps: 1, batch_size: 4, micro_batch_size: 2}
"""
PATH_FILE = TASK_FILE.replace("task: arith", "path: chats.jsonl, eval_path: held.jsonl")


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_override_path_replaces_the_files_task(tmp_path):
    cfg = load_config(_write(tmp_path, TASK_FILE), ["data.path=mine.jsonl"])
    assert (cfg.data.task, cfg.data.path, cfg.data.max_length) == (None, "mine.jsonl", 64)


def test_override_task_replaces_the_files_path(tmp_path):
    cfg = load_config(_write(tmp_path, PATH_FILE), ["data.task=reverse"])
    assert (cfg.data.task, cfg.data.path) == ("reverse", None)
    assert cfg.data.eval_path == "held.jsonl"  # only the rival key goes


def test_explicit_null_still_works(tmp_path):
    cfg = load_config(_write(tmp_path, TASK_FILE), ["data.task=null", "data.path=mine.jsonl"])
    assert (cfg.data.task, cfg.data.path) == (None, "mine.jsonl")
    # A null override names no new source, so it replaces nothing.
    assert load_config(_write(tmp_path, TASK_FILE), ["data.path=null"]).data.task == "arith"


@pytest.mark.parametrize("text,overrides", [
    (TASK_FILE, ["data.task=arith", "data.path=mine.jsonl"]),  # both on the command line
    (TASK_FILE.replace("task: arith", "task: arith, path: x.jsonl"), []),  # both in the file
])
def test_two_sources_given_together_still_fail(tmp_path, text, overrides):
    with pytest.raises(ConfigError, match="data.task: set exactly one"):
        load_config(_write(tmp_path, text), overrides)


def test_apply_overrides_drops_only_a_rival_from_the_base():
    base = {"data": {"task": "arith", "level": 2}, "model": {"name": "m"}}
    out = apply_overrides(base, ["data.path=p.jsonl"])
    assert out == {"data": {"level": 2, "path": "p.jsonl"}, "model": {"name": "m"}}
    assert base["data"] == {"task": "arith", "level": 2}  # the input is not modified
    assert apply_overrides(base, ["data.level=3"])["data"] == {"task": "arith", "level": 3}
    assert apply_overrides({}, ["data.task=arith"]) == {"data": {"task": "arith"}}
