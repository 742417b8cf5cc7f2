"""Turn `data:` config into tokenized training rows plus dataset facts for tracking.

Runs on the driver, once: workers receive the tokenized rows through the object store, so
every rank sees the same rows in the same order.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field

from tunefleet.data.formats import sft_row_problem, to_sft_example
from tunefleet.data.readers import BadRow, DataError, read_rows
from tunefleet.data.tasks import DEFAULT_LEVEL, Problem, get_task
from tunefleet.data.tokenize import pack_examples, tokenize_sft


@dataclass
class PreparedData:
    """rows: tokenized (and maybe packed) training rows; eval_problems: held-out task
    problems (built-in tasks only); info: name -> {digest, rows, source} for MLflow."""

    rows: list[dict]
    eval_problems: list[Problem] = field(default_factory=list)
    info: dict[str, dict] = field(default_factory=dict)
    bad_rows: tuple[BadRow, ...] = ()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def task_level(data_cfg) -> int:
    """The configured difficulty, or the task's calibrated default."""
    return data_cfg.level if data_cfg.level is not None else DEFAULT_LEVEL[data_cfg.task]


def task_problems(data_cfg) -> tuple[list[Problem], list[Problem]]:
    """Deterministic (train, eval) problems of a built-in task."""
    task, level = get_task(data_cfg.task), task_level(data_cfg)
    train = task.generate("train", data_cfg.num_train, data_cfg.seed, level)
    evals = task.generate("eval", data_cfg.num_eval, data_cfg.seed, level) if data_cfg.num_eval else []
    return train, evals


def _source_rows(data_cfg) -> tuple[list[dict], list[Problem], dict, tuple[BadRow, ...]]:
    if data_cfg.task is not None:
        train, evals = task_problems(data_cfg)
        rows = [{"prompt": p.prompt, "completion": p.answer} for p in train]
        source = f"builtin:{data_cfg.task}?level={task_level(data_cfg)}&seed={data_cfg.seed}"
        info = {"train": {"digest": _digest(rows), "rows": len(rows), "source": source}}
        if evals:
            info["eval"] = {"digest": _digest([p.prompt for p in evals]), "rows": len(evals), "source": source}
        return rows, evals, info, ()
    result = read_rows(data_cfg.path, on_bad_row=data_cfg.on_bad_row, validate=sft_row_problem)
    info = {"train": {"digest": result.digest, "rows": len(result.rows), "source": str(data_cfg.path)}}
    return result.rows, [], info, result.bad_rows


def prepare_sft(data_cfg, tokenizer) -> PreparedData:
    """Read or generate rows, apply the chat template, mask prompts, optionally pack."""
    raw, evals, info, bad = _source_rows(data_cfg)
    rows, too_long = [], []
    for i, row in enumerate(raw):
        tok = tokenize_sft(tokenizer, to_sft_example(row), data_cfg.max_length)
        if tok is None:
            too_long.append(BadRow(str(data_cfg.path or data_cfg.task), i + 1,
                                   f"no response tokens left within data.max_length={data_cfg.max_length}"))
            continue
        rows.append(tok)
    if too_long:
        if data_cfg.on_bad_row == "error":
            raise DataError(f"{too_long[0]} (set data.on_bad_row: skip to drop such rows)")
        warnings.warn(f"skipped {len(too_long)} rows with no response tokens after truncation; first: {too_long[0]}")
    if not rows:
        raise DataError(f"{data_cfg.path or data_cfg.task}: no usable training rows")
    if data_cfg.packing:
        rows = pack_examples(rows, data_cfg.max_length)
    info["train"]["tokenized_rows"] = len(rows)
    return PreparedData(rows=rows, eval_problems=evals, info=info, bad_rows=tuple(bad) + tuple(too_long))
