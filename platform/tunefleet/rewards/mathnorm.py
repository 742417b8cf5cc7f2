"""Final-answer extraction and numeric comparison for the `math_answer` reward.

Extraction order: a GSM8K-style `#### N` line, else the last `\\boxed{...}` (nested braces
allowed, so `\\boxed{\\frac{1}{2}}` works), else optionally the last number in the text.
Numbers compare exactly as fractions, so "0.50", "1/2", "\\frac{1}{2}" and "$0.5" agree
and float rounding never turns a wrong answer right.
"""

from __future__ import annotations

import re
from fractions import Fraction

# The arith task's patterns and normaliser, so both agree on what "a number" is.
from tunefleet.data.tasks import _HASHES, _INT, _normalise_number

_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
# One whole number: "1,234" (comma only as a thousands separator), "-5", "0.5", ".5", "3.".
_NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)"
_NUMBER_RE = re.compile(_NUMBER)
_FRACTION_RE = re.compile(rf"({_NUMBER})\s*/\s*({_NUMBER})")
# Last-number fallback: the arith task's number, or a simple fraction such as 3/4.
_LAST = re.compile(_INT.pattern + r"(?:\s*/\s*\d+)?")
# Markup that never changes a value: LaTeX spacing and sizing, currency, percent, degrees.
_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "\\$", "\\%", "^\\circ", "^{\\circ}",
          "$", "%", "{", "}")
_SPACES = re.compile(r"\s+")


def clean(text: str) -> str:
    """`text` without the markup in `_NOISE`, `\\frac{a}{b}` written as a/b, no trailing '.'."""
    text = _FRAC.sub(r"\1/\2", _TEXT.sub(r"\1", text))
    for noise in _NOISE:
        text = text.replace(noise, "")
    return text.strip().rstrip(".").strip()


def _to_fraction(text: str) -> Fraction | None:
    if not _NUMBER_RE.fullmatch(text):
        return None
    normal = _normalise_number(text.lstrip("+").rstrip("."))
    return Fraction(normal) if normal is not None else None


def parse_number(text: str) -> Fraction | None:
    """The value of a number or simple fraction in `text` ("$1,234.", "3/4", "\\dfrac{3}{4}",
    "50%"), or None if `text` is anything else."""
    text = clean(text)
    match = _FRACTION_RE.fullmatch(text)
    if not match:
        return _to_fraction(text)
    num, den = _to_fraction(match.group(1)), _to_fraction(match.group(2))
    return None if num is None or not den else num / den


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` whose braces balance, or None."""
    for match in reversed(list(_BOXED_START.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[match.end():i]
    return None


def _hashes_answer(text: str) -> str | None:
    candidates = [c.strip() for c in _HASHES.findall(text) if c.strip()]
    if not candidates:
        return None
    line = candidates[-1]
    # "#### 72 clips": GSM8K lines are numbers by convention, so trailing words are noise.
    if parse_number(line) is None and (first := _LAST.search(line)):
        return first.group(0)
    return line


def extract_answer(text: str, fallback_last_number: bool = True) -> str | None:
    """The model's final answer: `#### N`, else the last `\\boxed{}`, else (if allowed) the
    last number; None when none is found."""
    found = _hashes_answer(text)
    if found is None:
        found = last_boxed(text)
    if found is None and fallback_last_number:
        numbers = _LAST.findall(text)
        found = numbers[-1] if numbers else None
    return found


def gold_answer(answer: str) -> str:
    """The reference value: what follows the last `####` of a GSM8K answer, else `answer`."""
    found = _hashes_answer(answer)
    return found if found is not None else answer.strip()


def normalise_text(text: str) -> str:
    """Strip, collapse whitespace, casefold: the string comparison of `exact_match`."""
    return _SPACES.sub(" ", text.strip()).casefold()


def answers_match(predicted: str, gold: str) -> bool:
    """Equal as numbers when both parse as numbers, else as normalised strings."""
    p, g = parse_number(predicted), parse_number(gold)
    if p is not None and g is not None:
        return p == g
    return normalise_text(clean(predicted)) == normalise_text(clean(gold))


def math_answer_correct(completion: str, answer: str, fallback_last_number: bool = True) -> bool:
    """The `math_answer` reward's verdict, shared with `tunefleet eval`'s GSM8K suites: the
    extracted final answer (or, when none is found, the whole completion: "5", "Paris")
    matches the gold answer (a GSM8K `... #### N` string or a plain value)."""
    found = extract_answer(completion, fallback_last_number)
    return answers_match(completion if found is None else found, gold_answer(answer))
