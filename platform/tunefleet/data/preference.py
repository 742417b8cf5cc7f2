"""Preference rows (prompt/chosen/rejected, hh-rlhf dialogues) and KTO rows
(prompt/completion/label), normalised and tokenized for pairwise and unpaired losses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tunefleet.data.formats import SftExample, _turn_problem, _with_response
from tunefleet.data.readers import DataError
from tunefleet.data.tokenize import tokenize_sft

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
ASSISTANT_MARK = "\n\nAssistant:"


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt (chat messages) and two responses, the chosen one preferred."""

    prompt: tuple[dict, ...]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class KtoExample:
    """An unpaired completion with a desirable (True) / undesirable (False) label."""

    prompt: tuple[dict, ...]
    completion: str
    label: bool


def dialogue_messages(text: str) -> list[dict]:
    """hh-rlhf text ("\\n\\nHuman: ... \\n\\nAssistant: ...") -> chat messages."""
    parts = _TURN.split(text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the prompt's trailing "Assistant:" is the generation prompt, not a turn
    return messages


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Whole dialogues that share a prefix ending in "\\n\\nAssistant:" -> (prompt, chosen
    response, rejected response). The prompt ends at the last assistant marker both share."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT_MARK, 0, n)  # the marker must lie wholly in the shared part
    if cut < 0:
        raise DataError("chosen and rejected share no prefix ending in '\\n\\nAssistant:'")
    end = cut + len(ASSISTANT_MARK)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def _is_dialogue(row: dict) -> bool:
    return "prompt" not in row and isinstance(row.get("chosen"), str) and ASSISTANT_MARK in row["chosen"]


def preference_row_problem(row: Any) -> str | None:
    """Why `row` cannot be a preference pair, or None. Usable as `read_rows(validate=...)`."""
    if not isinstance(row, dict) or not {"chosen", "rejected"} <= set(row):
        return "expected a preference row with 'chosen' and 'rejected' (and 'prompt' unless whole dialogues)"
    try:
        ex = to_preference_example(row, check=False)
    except DataError as err:
        return str(err)
    if not ex.chosen.strip() or not ex.rejected.strip():
        return "empty chosen or rejected response"
    if ex.chosen.strip() == ex.rejected.strip():
        return "chosen and rejected responses are identical (no preference signal)"
    return None


def to_preference_example(row: dict, check: bool = True) -> PreferenceExample:
    """Normalise prompt/chosen/rejected (strings or messages) or hh-rlhf dialogues."""
    if check:
        problem = preference_row_problem(row)
        if problem:
            raise DataError(problem)
    if _is_dialogue(row):
        prompt, chosen, rejected = split_shared_prefix(row["chosen"], row["rejected"])
        return PreferenceExample(tuple(dialogue_messages(prompt)), chosen, rejected)
    if "prompt" not in row:
        raise DataError("preference row is missing 'prompt'")
    for key in ("prompt", "chosen", "rejected"):
        problem = _turn_problem(row[key], key, key != "prompt")
        if problem:
            raise DataError(problem)
    c, r = _with_response(row["prompt"], row["chosen"]), _with_response(row["prompt"], row["rejected"])
    if c.prompt != r.prompt:
        raise DataError("chosen and rejected continue different conversations")
    return PreferenceExample(c.prompt, c.response, r.response)


def kto_row_problem(row: Any) -> str | None:
    """Why `row` cannot be a KTO example ({prompt, completion, label: bool}), or None."""
    if not isinstance(row, dict) or not {"prompt", "completion", "label"} <= set(row):
        return "expected a KTO row with 'prompt', 'completion' and a boolean 'label'"
    if not isinstance(row["label"], bool):
        return f"'label' must be true or false, got {row['label']!r}"
    return _turn_problem(row["prompt"], "prompt", False) or _turn_problem(row["completion"], "completion", True)


def to_kto_example(row: dict) -> KtoExample:
    problem = kto_row_problem(row)
    if problem:
        raise DataError(problem)
    ex = _with_response(row["prompt"], row["completion"])
    return KtoExample(ex.prompt, ex.response, row["label"])


def _fit(seq: dict, keep_prompt: int, keep_response: int) -> dict:
    start = seq["loss_mask"].index(1)
    lo, hi = max(0, start - keep_prompt), start + keep_response
    return {"input_ids": seq["input_ids"][lo:hi], "loss_mask": seq["loss_mask"][lo:hi]}


def tokenize_pair(tokenizer, ex: PreferenceExample, max_length: int) -> dict | None:
    """{"chosen": {input_ids, loss_mask}, "rejected": {...}}, both within max_length.

    Long dialogues lose the *start* of the prompt (the latest turns matter most for the
    response) and responses are cut to at most half of max_length, so that the two
    responses are always compared after the same context. None when nothing is left."""
    c = tokenize_sft(tokenizer, SftExample(ex.prompt, ex.chosen), 10**9)
    r = tokenize_sft(tokenizer, SftExample(ex.prompt, ex.rejected), 10**9)
    if c is None or r is None:
        return None
    p_len = c["loss_mask"].index(1)
    longest = max(len(c["input_ids"]), len(r["input_ids"])) - p_len
    if p_len + longest <= max_length:
        return {"chosen": c, "rejected": r}
    keep_response = min(longest, max_length // 2)
    keep_prompt = max_length - keep_response
    return {"chosen": _fit(c, keep_prompt, keep_response), "rejected": _fit(r, keep_prompt, keep_response)}


def tokenize_kto(tokenizer, ex: KtoExample, max_length: int) -> dict | None:
    row = tokenize_sft(tokenizer, SftExample(ex.prompt, ex.completion), max_length)
    return None if row is None else {**row, "kto_label": float(ex.label)}
