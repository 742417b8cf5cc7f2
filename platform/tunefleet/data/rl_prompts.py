"""Prompt rows for online RL: what the RolloutPool completes and the rewards check.

A prompt row is {"prompt": text shown to reward functions, "prompt_ids": chat-templated
token ids [P] (with the generation prompt), "answer": gold answer or None, "meta": the
row's other fields (e.g. {"task": "arith"} or {"tests": ...})}.

Sources: a built-in task's train split (its answers feed the task verifier), or a user
JSONL/Parquet file with `prompt` (text or chat messages) or `question` (GSM8K), and an
optional `answer`; every other field goes to `meta`. Pure: no torch, ray or vllm.
"""

from __future__ import annotations

from tunefleet.data.formats import _prompt_messages
from tunefleet.data.readers import BadRow, DataError, read_rows
from tunefleet.data.tokenize import _chat_ids

PROMPT_KEYS = ("prompt", "question")


def rl_row_problem(row) -> str | None:
    """Why a row cannot be an RL prompt, or None."""
    if not isinstance(row, dict):
        return f"expected an object, got {type(row).__name__}"
    key = next((k for k in PROMPT_KEYS if k in row), None)
    if key is None:
        return f"no prompt: expected one of {', '.join(PROMPT_KEYS)}"
    value = row[key]
    if isinstance(value, str):
        return None if value.strip() else f"{key!r} is empty"
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                 for m in value):
        return None
    return f"{key!r} must be text or a list of chat messages"


def _prompt_text(value) -> str:
    return value if isinstance(value, str) else "\n".join(str(m["content"]) for m in value)


def to_prompt_row(row: dict, tokenizer, max_prompt_tokens: int) -> dict | None:
    """One RL prompt row, or None when the prompt does not fit `max_prompt_tokens`."""
    key = next(k for k in PROMPT_KEYS if k in row)
    ids = _chat_ids(tokenizer, list(_prompt_messages(row[key])), add_generation_prompt=True)
    if len(ids) > max_prompt_tokens:
        return None
    answer = row.get("answer")
    meta = {k: v for k, v in row.items() if k not in (key, "answer")}
    return {"prompt": _prompt_text(row[key]), "prompt_ids": ids,
            "answer": None if answer is None else str(answer), "meta": meta}


def task_prompt_rows(problems, task_name: str, tokenizer, max_prompt_tokens: int) -> list[dict]:
    """A built-in task's problems as prompt rows (meta carries the task for its verifier)."""
    rows = [{"prompt": p.prompt, "answer": p.answer, "task": task_name, "id": p.id} for p in problems]
    out = [to_prompt_row(r, tokenizer, max_prompt_tokens) for r in rows]
    return [r for r in out if r is not None]


def read_prompt_rows(path: str, tokenizer, max_prompt_tokens: int, on_bad_row: str = "error"
                     ) -> tuple[list[dict], str, tuple[BadRow, ...]]:
    """Prompt rows of a user file: (rows, file digest, bad rows). Prompts longer than
    `max_prompt_tokens` are bad rows too (reported with their line)."""
    result = read_rows(path, on_bad_row=on_bad_row, validate=rl_row_problem)
    rows, too_long = [], []
    for i, raw in enumerate(result.rows):
        row = to_prompt_row(raw, tokenizer, max_prompt_tokens)
        if row is None:
            too_long.append(BadRow(str(path), i + 1, f"prompt longer than {max_prompt_tokens} tokens"))
            continue
        rows.append(row)
    if too_long and on_bad_row == "error":
        raise DataError(f"{too_long[0]} (set data.on_bad_row: skip to drop such rows)")
    if not rows:
        raise DataError(f"{path}: no usable prompts")
    return rows, result.digest, tuple(result.bad_rows) + tuple(too_long)
