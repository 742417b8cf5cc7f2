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
from tunefleet.data.preference import (
    kto_row_problem,
    preference_row_problem,
    to_kto_example,
    to_preference_example,
    tokenize_kto,
    tokenize_pair,
)
from tunefleet.data.readers import BadRow, DataError, read_rows
from tunefleet.data.rl_prompts import read_prompt_rows, task_prompt_rows
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


def _tokenize_all(data_cfg, raw: list[dict], tokenize) -> tuple[list[dict], list[BadRow]]:
    rows, too_long = [], []
    for i, row in enumerate(raw):
        tok = tokenize(row)
        if tok is None:
            too_long.append(BadRow(str(data_cfg.path or data_cfg.task), i + 1,
                                   f"no response tokens left within data.max_length={data_cfg.max_length}"))
            continue
        rows.append(tok)
    return rows, too_long


def _check_truncated(data_cfg, rows: list[dict], too_long: list[BadRow]) -> None:
    if too_long:
        if data_cfg.on_bad_row == "error":
            raise DataError(f"{too_long[0]} (set data.on_bad_row: skip to drop such rows)")
        warnings.warn(f"skipped {len(too_long)} rows with no response tokens after truncation; first: {too_long[0]}",
                      stacklevel=2)
    if not rows:
        raise DataError(f"{data_cfg.path or data_cfg.task}: no usable training rows")


def prepare_sft(data_cfg, tokenizer) -> PreparedData:
    """Read or generate rows, apply the chat template, mask prompts, optionally pack."""
    raw, evals, info, bad = _source_rows(data_cfg)
    rows, too_long = _tokenize_all(data_cfg, raw, lambda r: tokenize_sft(tokenizer, to_sft_example(r),
                                                                          data_cfg.max_length))
    _check_truncated(data_cfg, rows, too_long)
    if data_cfg.packing:
        rows = pack_examples(rows, data_cfg.max_length)
    info["train"]["tokenized_rows"] = len(rows)
    return PreparedData(rows=rows, eval_problems=evals, info=info, bad_rows=tuple(bad) + tuple(too_long))


# kind -> (row validator, row -> tokenized row)
_PAIRED = {
    "pairs": (preference_row_problem, lambda tok, r, n: tokenize_pair(tok, to_preference_example(r), n)),
    "kto": (kto_row_problem, lambda tok, r, n: tokenize_kto(tok, to_kto_example(r), n)),
}


def read_tokenized(path: str, kind: str, data_cfg, tokenizer) -> tuple[list[dict], dict, tuple[BadRow, ...]]:
    """Read a preference/KTO file, report bad rows by the data.on_bad_row policy, tokenize."""
    validate, tokenize = _PAIRED[kind]
    result = read_rows(path, on_bad_row=data_cfg.on_bad_row, validate=validate)
    rows, too_long = _tokenize_all(data_cfg, result.rows, lambda r: tokenize(tokenizer, r, data_cfg.max_length))
    _check_truncated(data_cfg, rows, too_long)
    info = {"digest": result.digest, "rows": len(result.rows), "source": str(path)}
    return rows, info, tuple(result.bad_rows) + tuple(too_long)


def task_preference_rows(data_cfg, kind: str) -> tuple[list[dict], list[Problem], dict]:
    """Built-in task as preference data: chosen = the right answer, rejected = a plausible
    wrong one (pairs), or alternating right (label true) / wrong (false) rows (kto)."""
    import random

    task = get_task(data_cfg.task)
    train, evals = task_problems(data_cfg)
    rng = random.Random(f"pairs-{data_cfg.seed}")
    if kind == "pairs":
        raw = [{"prompt": p.prompt, "chosen": p.answer, "rejected": task.wrong_answer(p.answer, rng)} for p in train]
    else:
        raw = [{"prompt": p.prompt, "completion": p.answer if i % 2 == 0 else task.wrong_answer(p.answer, rng),
                "label": i % 2 == 0} for i, p in enumerate(train)]
    source = f"builtin:{data_cfg.task}?level={task_level(data_cfg)}&seed={data_cfg.seed}&kind={kind}"
    return raw, evals, {"digest": _digest(raw), "rows": len(raw), "source": source}


def prepare_rl(data_cfg, tokenizer, max_prompt_tokens: int) -> PreparedData:
    """Prompt rows for online RL (data/rl_prompts.py): a built-in task's train split (its
    eval split is held out for accuracy before/after) or a user file."""
    if data_cfg.task is not None:
        train, evals = task_problems(data_cfg)
        rows = task_prompt_rows(train, data_cfg.task, tokenizer, max_prompt_tokens)
        if not rows:
            raise DataError(f"{data_cfg.task}: no prompt fits in {max_prompt_tokens} tokens")
        source = f"builtin:{data_cfg.task}?level={task_level(data_cfg)}&seed={data_cfg.seed}&kind=prompts"
        info = {"train": {"digest": _digest([r["prompt"] for r in rows]), "rows": len(rows), "source": source}}
        return PreparedData(rows=rows, eval_problems=evals, info=info)
    rows, digest, bad = read_prompt_rows(data_cfg.path, tokenizer, max_prompt_tokens, data_cfg.on_bad_row)
    return PreparedData(rows=rows, info={"train": {"digest": digest, "rows": len(rows), "source": str(data_cfg.path)}},
                        bad_rows=bad)


def prepare_data(data_cfg, batch_kind: str, tokenizer, max_prompt_tokens: int | None = None) -> PreparedData:
    """Training rows for the algorithm's batch kind ("single", "pairs", "kto"; "rl": prompt
    rows of at most `max_prompt_tokens`)."""
    if batch_kind == "rl":
        return prepare_rl(data_cfg, tokenizer, max_prompt_tokens or data_cfg.max_length)
    if batch_kind == "single":
        return prepare_sft(data_cfg, tokenizer)
    if data_cfg.task is not None:
        raw, evals, info = task_preference_rows(data_cfg, batch_kind)
        validate, tokenize = _PAIRED[batch_kind]
        rows, too_long = _tokenize_all(data_cfg, raw, lambda r: tokenize(tokenizer, r, data_cfg.max_length))
        _check_truncated(data_cfg, rows, too_long)
        return PreparedData(rows=rows, eval_problems=evals, info={"train": info}, bad_rows=tuple(too_long))
    rows, info, bad = read_tokenized(data_cfg.path, batch_kind, data_cfg, tokenizer)
    return PreparedData(rows=rows, info={"train": info}, bad_rows=bad)


def read_heldout(data_cfg, batch_kind: str, tokenizer, max_prompt_tokens: int | None = None):
    """`data.eval_path` rows in the training rows' form for `batch_kind` (tokenized rows; RL:
    prompt rows): (rows, digest). Bad rows follow data.on_bad_row and name `file:line`."""
    path = data_cfg.eval_path
    if batch_kind == "rl":
        rows, digest, _ = read_prompt_rows(path, tokenizer, max_prompt_tokens or data_cfg.max_length,
                                           data_cfg.on_bad_row)
    elif batch_kind == "single":
        result = read_rows(path, on_bad_row=data_cfg.on_bad_row, validate=sft_row_problem)
        rows, too_long = _tokenize_all(data_cfg, result.rows, lambda r: tokenize_sft(
            tokenizer, to_sft_example(r), data_cfg.max_length))
        _check_truncated(data_cfg, rows, too_long)
        digest = result.digest
    else:
        rows, info, _ = read_tokenized(path, batch_kind, data_cfg, tokenizer)
        digest = info["digest"]
    if not rows:
        raise DataError(f"{path}:1: empty eval file (no usable rows)")
    return rows, digest
