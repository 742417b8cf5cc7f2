"""Normalise the supported dataset row shapes into one SFT example type.

Supported shapes (detected by their keys):

* ``messages``          ``{"messages": [{"role", "content"}, ..., {"role": "assistant", ...}]}``
* ``preference``        ``{"prompt", "chosen", "rejected"}`` (strings or message lists)
* ``prompt_completion`` ``{"prompt", "completion"}`` (strings or message lists)
* ``question_answer``   ``{"question", "answer"}`` (e.g. GSM8K)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tunefleet.data.readers import DataError

SHAPES = ("messages", "prompt_completion", "preference", "question_answer")
KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool"})

_GSM8K_ANSWER = re.compile(r"####\s*([^\n]*)")


@dataclass(frozen=True)
class SftExample:
    """A chat prompt (messages before the response) and the assistant response to learn."""

    prompt: tuple[dict, ...]
    response: str


def _shape_or_reason(row: Any) -> tuple[str | None, str | None]:
    if not isinstance(row, dict):
        return None, f"expected an object, got {type(row).__name__}"
    keys = set(row)
    if "messages" in keys:
        return "messages", None
    # Preference before prompt/completion: both carry "prompt".
    if {"chosen", "rejected"} <= keys:
        return "preference", None
    if {"prompt", "completion"} <= keys:
        return "prompt_completion", None
    if {"question", "answer"} <= keys:
        return "question_answer", None
    return None, (
        f"unknown row shape with keys {sorted(keys)}; expected one of: "
        "messages | prompt+completion | prompt+chosen+rejected | question+answer"
    )


def detect_shape(row: dict) -> str:
    """Return the row's shape name (one of :data:`SHAPES`); raise :class:`DataError` if unknown."""
    shape, reason = _shape_or_reason(row)
    if shape is None:
        raise DataError(reason)
    return shape


def _message_problem(msg: Any, where: str) -> str | None:
    if not isinstance(msg, dict):
        return f"{where} must be an object, got {type(msg).__name__}"
    role = msg.get("role")
    if not isinstance(role, str):
        return f"{where} has no string 'role'"
    if role not in KNOWN_ROLES:
        return f"{where} has unknown role {role!r} (known: {', '.join(sorted(KNOWN_ROLES))})"
    if not isinstance(msg.get("content"), str):
        return f"{where} has no string 'content'"
    return None


def _messages_problem(messages: Any, key: str, need_assistant_last: bool) -> str | None:
    if not isinstance(messages, list):
        return f"'{key}' must be a list of messages, got {type(messages).__name__}"
    if not messages:
        return f"'{key}' is empty"
    for i, msg in enumerate(messages):
        problem = _message_problem(msg, f"'{key}'[{i}]")
        if problem:
            return problem
    if need_assistant_last:
        if messages[-1]["role"] != "assistant":
            return f"'{key}' must end with an assistant turn, last role is {messages[-1]['role']!r}"
        if not messages[-1]["content"].strip():
            return f"'{key}' has an empty final assistant response"
    return None


def _text_problem(value: Any, key: str) -> str | None:
    if not isinstance(value, str):
        return f"'{key}' must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"'{key}' is empty"
    return None


def _turn_problem(value: Any, key: str, is_response: bool) -> str | None:
    """A prompt or response field that may be a string or a list of messages."""
    if isinstance(value, list):
        return _messages_problem(value, key, need_assistant_last=is_response)
    return _text_problem(value, key)


def _answer_problem(value: Any) -> str | None:
    # Numeric answers are common in math datasets; accept them (bool is not a number here).
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    return _text_problem(value, "answer")


def sft_row_problem(row: Any) -> str | None:
    """Return why ``row`` cannot become an :class:`SftExample`, or None if it can.

    Usable as ``read_rows(..., validate=sft_row_problem)``.
    """
    shape, reason = _shape_or_reason(row)
    if shape == "messages":
        return _messages_problem(row["messages"], "messages", need_assistant_last=True)
    if shape == "preference":
        if "prompt" not in row:
            return "preference row is missing 'prompt'"
        return _turn_problem(row["prompt"], "prompt", False) or _turn_problem(
            row["chosen"], "chosen", True
        )
    if shape == "prompt_completion":
        return _turn_problem(row["prompt"], "prompt", False) or _turn_problem(
            row["completion"], "completion", True
        )
    if shape == "question_answer":
        return _text_problem(row["question"], "question") or _answer_problem(row["answer"])
    return reason


def _copy_messages(messages: list[dict]) -> tuple[dict, ...]:
    # Only role/content travel on: extra keys (names, weights) would confuse chat templates.
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)


def _prompt_messages(prompt: str | list[dict]) -> tuple[dict, ...]:
    if isinstance(prompt, list):
        return _copy_messages(prompt)
    return ({"role": "user", "content": prompt},)


def _split_messages(messages: list[dict]) -> tuple[tuple[dict, ...], str]:
    """Split a conversation ending with an assistant turn into (prompt, response)."""
    return _copy_messages(messages[:-1]), messages[-1]["content"]


def _with_response(prompt: str | list[dict], response: str | list[dict]) -> SftExample:
    prefix = _prompt_messages(prompt)
    if isinstance(response, list):
        # Any turns before the final assistant turn belong to the prompt.
        extra, text = _split_messages(response)
        return SftExample(prompt=prefix + extra, response=text)
    return SftExample(prompt=prefix, response=response)


def to_sft_example(row: dict) -> SftExample:
    """Convert any supported row shape into an :class:`SftExample`.

    Raises :class:`DataError` with the reason from :func:`sft_row_problem` for bad rows.
    Preference rows train on the chosen response; question/answer rows keep the full
    answer text (GSM8K reasoning plus ``#### N``) as the response.
    """
    problem = sft_row_problem(row)
    if problem is not None:
        raise DataError(problem)
    shape = detect_shape(row)
    if shape == "messages":
        prompt, response = _split_messages(row["messages"])
        return SftExample(prompt=prompt, response=response)
    if shape == "preference":
        return _with_response(row["prompt"], row["chosen"])
    if shape == "prompt_completion":
        return _with_response(row["prompt"], row["completion"])
    return _with_response(row["question"], str(row["answer"]))


def gsm8k_final_answer(answer: str) -> str | None:
    """Return the final answer after the last ``####`` marker (commas removed), or None."""
    matches = _GSM8K_ANSWER.findall(answer or "")
    if not matches:
        return None
    value = matches[-1].replace(",", "").strip()
    return value or None
