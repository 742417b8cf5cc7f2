"""Data loading, SFT row normalisation, tokenization/packing and built-in tasks.

Deliberately free of ray/vllm imports so it can be used in any process; torch is only
imported inside :func:`collate`.
"""

from tunefleet.data.formats import (
    SftExample,
    detect_shape,
    gsm8k_final_answer,
    sft_row_problem,
    to_sft_example,
)
from tunefleet.data.readers import BadRow, DataError, ReadResult, read_rows, rows_to_table
from tunefleet.data.tasks import DEFAULT_LEVEL, TASKS, Problem, Task, get_task
from tunefleet.data.tokenize import collate, pack_examples, tokenize_sft

__all__ = [
    "DEFAULT_LEVEL",
    "TASKS",
    "BadRow",
    "DataError",
    "Problem",
    "ReadResult",
    "SftExample",
    "Task",
    "collate",
    "detect_shape",
    "get_task",
    "gsm8k_final_answer",
    "pack_examples",
    "read_rows",
    "rows_to_table",
    "sft_row_problem",
    "tokenize_sft",
    "to_sft_example",
]
