"""Read training rows from JSONL / JSON / Parquet files with precise error reporting.

Every bad row is reported as ``file:line: reason`` so that a user can jump straight to
the offending line instead of guessing from a stack trace deep inside a trainer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

SUPPORTED_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")
ON_BAD_ROW_CHOICES = ("error", "skip")
# How many bad rows are quoted in the skip-mode warning; the rest are only counted.
_WARN_EXAMPLES = 3

Validator = Callable[[dict], "str | None"]


class DataError(ValueError):
    """A data file is missing, unreadable or contains a bad row."""


@dataclass(frozen=True)
class BadRow:
    """One row that could not be used, located by file and 1-based line (or row index)."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class ReadResult:
    """The good rows of a file, the rows that were skipped, and the file's sha256 digest."""

    rows: list[dict]
    bad_rows: tuple[BadRow, ...]
    path: str
    digest: str

    @property
    def short_digest(self) -> str:
        """First 16 hex chars of the digest, for logs and run tags."""
        return self.digest[:16]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    raise DataError(
        f"{path}: unsupported file extension; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_json_line(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        # json's own message includes "line 1" which is meaningless for a single line.
        return None, f"invalid JSON ({e.msg} at column {e.colno})"


def _iter_jsonl(path: Path, gz: bool) -> Iterator[tuple[int, Any, str | None]]:
    opener = gzip.open if gz else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                value, err = _parse_json_line(line)
                yield lineno, value, err
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read file ({e})") from e


def _iter_json(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    # A .json file has no meaningful per-row line, so the 1-based list index is used.
    for index, value in enumerate(data, start=1):
        yield index, value, None


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read Parquet file ({e})") from e
    for index, value in enumerate(table.to_pylist(), start=1):
        yield index, value, None


def _iter_raw(path: Path, ext: str) -> Iterator[tuple[int, Any, str | None]]:
    if ext == ".jsonl":
        return _iter_jsonl(path, gz=False)
    if ext == ".jsonl.gz":
        return _iter_jsonl(path, gz=True)
    if ext == ".json":
        return _iter_json(path)
    return _iter_parquet(path)


def _row_problem(value: Any, parse_error: str | None, validate: Validator | None) -> str | None:
    if parse_error is not None:
        return parse_error
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    if validate is not None:
        return validate(value)
    return None


def _warn_skipped(path: str, bad: list[BadRow], total: int) -> None:
    shown = "; ".join(str(b) for b in bad[:_WARN_EXAMPLES])
    more = f" (and {len(bad) - _WARN_EXAMPLES} more)" if len(bad) > _WARN_EXAMPLES else ""
    warnings.warn(
        f"{path}: skipped {len(bad)} of {total} rows: {shown}{more}", stacklevel=3
    )


def read_rows(
    path: str | Path,
    on_bad_row: str = "error",
    validate: Validator | None = None,
) -> ReadResult:
    """Read all rows of a ``.jsonl``, ``.jsonl.gz``, ``.json`` or ``.parquet`` file.

    A row is bad when it is not valid JSON, not an object, or ``validate(row)`` returns a
    reason. With ``on_bad_row="error"`` the first bad row raises :class:`DataError` with a
    ``file:line: reason`` message; with ``"skip"`` bad rows are collected, a one-line
    warning is emitted, and only the good rows are returned.
    """
    if on_bad_row not in ON_BAD_ROW_CHOICES:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW_CHOICES}, got {on_bad_row!r}")
    p = Path(path)
    ext = _suffix(p)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    rows: list[dict] = []
    bad: list[BadRow] = []
    for line, value, err in _iter_raw(p, ext):
        reason = _row_problem(value, err, validate)
        if reason is None:
            rows.append(value)
            continue
        bad_row = BadRow(path=str(p), line=line, reason=reason)
        if on_bad_row == "error":
            raise DataError(str(bad_row))
        bad.append(bad_row)
    if bad:
        _warn_skipped(str(p), bad, len(rows) + len(bad))
    return ReadResult(rows=rows, bad_rows=tuple(bad), path=str(p), digest=_file_digest(p))


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Convert a list of row dicts into a ``pyarrow.Table`` (columns inferred from the rows)."""
    if not rows:
        return pa.table({})
    return pa.Table.from_pylist(list(rows))
