"""Evaluation suites: what `tunefleet eval TARGET SUITE...` runs, parsed and checked before
any model loads.

Suite specs on the command line:
  arith, arith:3, arith:1-3      a built-in task (data/tasks.py) at a level or range of levels
                                 (a range is one suite per level), on its `eval` split
  reverse, reverse:2             the same for `reverse`
  gsm8k:PATH                     GSM8K rows {"question", "answer": "... #### N"}: generative exact match
  mc:PATH                        {"question", "choices": [str, ...], "answer": index}: log-likelihood MC
  ppl:PATH                       {"text"}, {"messages": [...]} or {"question", "answer"} rows: perplexity

A missing column, a choice index out of range or an empty file is a DataError `file:line: reason`.
Pure Python: no torch, ray or vllm.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunefleet.data.readers import DataError, read_rows
from tunefleet.data.tasks import DEFAULT_LEVEL, TASKS, get_task
from tunefleet.rewards.mathnorm import gold_answer

KINDS = ("generative", "mc", "ppl")
FILE_SUITES = {"gsm8k": "generative", "mc": "mc", "ppl": "ppl"}
DEFAULT_TASK_PROBLEMS = 100
_LEVELS = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class Example:
    """One eval item. generative: `prompt` (one user turn) and gold `reference`; mc: `prompt`
    is the context, `choices` the continuations, `reference` the gold index as text; ppl:
    `prompt` is the whole text, `reference` empty."""

    id: str
    prompt: str
    reference: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    """A named list of examples of one kind. `task`: the built-in task whose `verify` scores a
    generative suite (None: GSM8K-style math answers). `path`/`digest`: the data file."""

    name: str
    kind: str
    examples: tuple[Example, ...]
    task: str | None = None
    path: str | None = None
    digest: str = ""
    info: dict = field(default_factory=dict)


class SuiteError(ValueError):
    """A suite spec that names no known suite."""


def _levels(task_name: str, text: str) -> list[int]:
    task = get_task(task_name)
    if not text:
        return [DEFAULT_LEVEL[task_name]]
    m = _LEVELS.match(text)
    levels = list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)) if m else []
    bad = [lv for lv in levels if lv not in task.levels]
    if not levels or bad:
        raise SuiteError(f"suite {task_name}:{text}: levels must be N or N-M within {task.levels}")
    return levels


def examples_digest(examples) -> str:
    """sha256 of the examples' content: the identity of generated (file-less) eval data."""
    blob = json.dumps([[e.id, e.prompt, e.reference, list(e.choices)] for e in examples], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def task_suites(task_name: str, level_text: str, limit: int | None, seed: int) -> list[Suite]:
    """One suite per level: `limit` (default DEFAULT_TASK_PROBLEMS) eval-split problems."""
    task = get_task(task_name)
    suites = []
    for level in _levels(task_name, level_text):
        problems = task.generate("eval", limit or DEFAULT_TASK_PROBLEMS, seed, level)
        examples = tuple(Example(p.id, p.prompt, p.answer) for p in problems)
        suites.append(Suite(f"{task_name}_l{level}", "generative", examples, task=task_name,
                            digest=examples_digest(examples), info={"level": level, "seed": seed}))
    return suites


# ------------------------------------------------------------------------- row checks

def _need_text(row: dict, key: str) -> str | None:
    if key not in row:
        return f"missing column {key!r}"
    if not isinstance(row[key], str) or not row[key].strip():
        return f"column {key!r} must be non-empty text"
    return None


def gsm8k_problem(row: dict) -> str | None:
    """Why a row is not a GSM8K row, or None."""
    problem = _need_text(row, "question") or _need_text(row, "answer")
    if problem is None and "####" not in row["answer"]:
        return "column 'answer' has no final '#### N' line"
    return problem


def mc_problem(row: dict) -> str | None:
    """Why a row is not a multiple-choice row, or None."""
    problem = _need_text(row, "question")
    if problem:
        return problem
    choices = row.get("choices")
    if choices is None:
        return "missing column 'choices'"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        return "column 'choices' must be a list of at least 2 non-empty strings"
    if "answer" not in row:
        return "missing column 'answer'"
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int):
        return f"column 'answer' must be a choice index (int), got {answer!r}"
    if not 0 <= answer < len(choices):
        return f"answer index {answer} out of range for {len(choices)} choices (0..{len(choices) - 1})"
    return None


def ppl_text(row: dict) -> str:
    """The raw text of a perplexity row: `text`, chat messages' contents joined by newlines, or
    a GSM8K-style row's question and worked answer on two lines (no chat template: the same
    text lm-eval's `hf` model would score)."""
    if "text" in row:
        return row["text"]
    if "messages" not in row and "question" in row:
        return f"{row['question']}\n{row['answer']}"
    return "\n".join(str(m["content"]) for m in row["messages"])


def ppl_problem(row: dict) -> str | None:
    """Why a row is not a perplexity row, or None."""
    if "text" in row:
        return _need_text(row, "text")
    msgs = row.get("messages")
    if msgs is None and "question" in row:
        return _need_text(row, "question") or _need_text(row, "answer")
    if msgs is None:
        return "missing column 'text' (or 'messages', or 'question' and 'answer')"
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                        for m in msgs):
        return "column 'messages' must be a non-empty list of {role, content} objects"
    return None if ppl_text(row).strip() else "the messages hold no text"


_CHECKS = {"gsm8k": gsm8k_problem, "mc": mc_problem, "ppl": ppl_problem}


def _example(kind: str, row: dict, i: int, stem: str) -> Example:
    if kind == "gsm8k":
        return Example(f"{stem}-{i}", row["question"], gold_answer(row["answer"]))
    if kind == "mc":
        return Example(f"{stem}-{i}", row["question"], str(row["answer"]), tuple(row["choices"]))
    return Example(f"{stem}-{i}", ppl_text(row), "")


def file_suite(kind: str, path: str, limit: int | None) -> Suite:
    """A suite from a user file; every row is checked (errors name `file:line`)."""
    result = read_rows(path, validate=_CHECKS[kind])
    if not result.rows:
        raise DataError(f"{path}:1: empty eval file (no rows)")
    rows = result.rows[:limit] if limit else result.rows
    stem = Path(path).name.split(".")[0]
    examples = tuple(_example(kind, row, i, stem) for i, row in enumerate(rows))
    return Suite(f"{kind}_{stem}", FILE_SUITES[kind], examples, path=str(Path(path).resolve()),
                 digest=result.digest, info={"file_rows": len(result.rows)})


def parse_suite(spec: str, limit: int | None = None, seed: int = 0) -> list[Suite]:
    """The suites one spec names (see the module doc)."""
    head, _, rest = spec.partition(":")
    if head in TASKS:
        return task_suites(head, rest, limit, seed)
    if head in FILE_SUITES:
        if not rest:
            raise SuiteError(f"suite {spec!r}: give a file, e.g. {head}:data.jsonl")
        return [file_suite(head, rest, limit)]
    known = ", ".join([*sorted(TASKS), *(f"{k}:PATH" for k in FILE_SUITES)])
    raise SuiteError(f"unknown suite {spec!r}; known: {known} (tasks take :LEVEL or :N-M)")


def parse_suites(specs: list[str], limit: int | None = None, seed: int = 0) -> list[Suite]:
    """All suites of `specs`, names made unique (a second `mc_x` becomes `mc_x_2`)."""
    suites, seen = [], {}
    for spec in specs:
        for suite in parse_suite(spec, limit, seed):
            seen[suite.name] = seen.get(suite.name, 0) + 1
            if seen[suite.name] > 1:
                suite = Suite(f"{suite.name}_{seen[suite.name]}", suite.kind, suite.examples, suite.task,
                              suite.path, suite.digest, suite.info)
            suites.append(suite)
    return suites
