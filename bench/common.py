"""Helpers shared by the benchmarks in bench/: data, matmul peak, FLOP limit, subprocesses.

Kept free of heavy imports at module level so the parent process of a benchmark stays light
(it only measures the matmul peak and starts the measured sides as subprocesses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ../shared beside the checkout (developer and CI machines only; never an absolute path).
SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K_PATH = SHARED / "data" / "gsm8k" / "train.jsonl"
HH_HARMLESS_PATH = SHARED / "data" / "hh-rlhf-harmless" / "test.jsonl.gz"

# Both sides of a comparison get the same thread settings; OMP/MKL are read at import time,
# so they must be set in the environment of the subprocess, not only via torch.set_num_threads.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def sub_env(threads: int) -> dict[str, str]:
    """Environment for a measured subprocess: fixed threads, offline, no telemetry."""
    env = dict(os.environ)
    env.update({k: str(threads) for k in THREAD_ENV})
    env.update({
        "TOKENIZERS_PARALLELISM": "false",  # the tokenizer must not steal the 2 cores
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "WANDB_DISABLED": "true",
        "DISABLE_MLFLOW_INTEGRATION": "TRUE",
        "PYTHONWARNINGS": "ignore",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    })
    return env


def run_side(argv: list[str], threads: int) -> dict:
    """Run `python <argv> --result FILE` in a fresh process and return the JSON it wrote.

    A fresh process per side keeps memory, thread pools and allocator state from leaking
    from one measurement into the other.
    """
    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, *argv, "--result", str(out)], env=sub_env(threads))
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"benchmark side failed (exit {proc.returncode}): {' '.join(argv)}")
        return json.loads(out.read_text())


def matmul_gflops(dtype_name: str, seconds: float = 1.0, size: int = 2048) -> float:
    """Measured GFLOP/s of a square `size` matmul in fp32 or bf16 over about `seconds`."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: oneDNN picks and caches its kernel on the first call
    n, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=out)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * n / elapsed / 1e9


def flop_limit_tokens_per_s(n_params: int, gflops: float) -> float:
    """Training tokens/s the matmul peak allows at 6*N FLOPs per token."""
    return gflops * 1e9 / (6 * n_params)


def problems_to_rows(data: str, n: int, gsm8k_path: Path = GSM8K_PATH) -> list[dict]:
    """The first `n` raw rows of the benchmark data, deterministic.

    arith: generated problems as prompt/completion strings; gsm8k: file order.
    """
    if data == "arith":
        from tunefleet.data import get_task

        problems = get_task("arith").generate("train", n, seed=0, level=2)
        return [{"prompt": p.prompt, "completion": p.answer} for p in problems]
    rows = []
    with open(gsm8k_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def sft_examples(tokenizer, data: str, n: int, max_length: int, gsm8k_path: Path = GSM8K_PATH):
    """Return (examples, tokenized) for the first `n` usable rows, in order.

    Rows whose truncation leaves no response tokens are dropped on BOTH sides (the caller
    gives TRL the same `examples`), so the two frameworks see identical data.
    """
    from tunefleet.data import to_sft_example, tokenize_sft

    ask = n
    while True:  # usually one pass; more only when many rows are cut to nothing
        rows = problems_to_rows(data, ask, gsm8k_path)
        examples, tokenized = [], []
        for row in rows:
            ex = to_sft_example(row)
            tok = tokenize_sft(tokenizer, ex, max_length)
            if tok is not None:
                examples.append(ex)
                tokenized.append(tok)
                if len(examples) == n:
                    return examples, tokenized
        if len(rows) < ask:  # the source is exhausted
            raise SystemExit(f"only {len(examples)} usable {data} rows, the run needs {n}")
        ask *= 2


def trl_row(example) -> dict:
    """An SftExample as a TRL conversational prompt/completion row (completion-only loss)."""
    return {"prompt": [dict(m) for m in example.prompt],
            "completion": [{"role": "assistant", "content": example.response}]}


def preference_rows(data: str, n: int, hh_path: Path = HH_HARMLESS_PATH) -> list[dict]:
    """Up to `n` raw preference rows, deterministic: hh-rlhf harmless in file order (whole
    dialogues), or generated arith pairs (chosen = right answer, rejected = a wrong one)."""
    if data == "arith":
        from tunefleet.config.schema import DataConfig
        from tunefleet.data.prepare import task_preference_rows

        cfg = DataConfig(task="arith", level=2, num_train=n, num_eval=0, seed=0)
        return task_preference_rows(cfg, "pairs")[0]
    import gzip

    rows = []
    with gzip.open(hh_path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def preference_pairs(tokenizer, data: str, n: int, max_length: int, max_prompt: int, spare: int = 0,
                     hh_path: Path = HH_HARMLESS_PATH):
    """Return (examples, tokenized pairs) for the first `n` valid preference rows that fit
    WITHOUT truncation: prompt <= `max_prompt` tokens and both sequences <= max_length - spare.

    Nothing is ever cut, so the frameworks' different truncation rules never come into play
    and both sides can see the same tokens. `spare` leaves room for tokens another
    framework's tokenization adds (TRL keeps ChatML's newline after the final end-of-turn).
    """
    from tunefleet.data.preference import preference_row_problem, to_preference_example, tokenize_pair

    ask = 4 * n
    while True:  # one pass unless most rows are too long
        rows = preference_rows(data, ask, hh_path)
        examples, pairs = [], []
        for row in rows:
            if preference_row_problem(row) is not None:
                continue
            ex = to_preference_example(row)
            whole = tokenize_pair(tokenizer, ex, 10**9)  # untruncated, to see what fits
            if whole is None:
                continue
            prompt_len = whole["chosen"]["loss_mask"].index(1)
            longest = max(len(whole["chosen"]["input_ids"]), len(whole["rejected"]["input_ids"]))
            if prompt_len <= max_prompt and longest <= max_length - spare:
                pair = tokenize_pair(tokenizer, ex, max_length)  # what training uses: the same
                assert pair == whole, "tokenize_pair cut a pair that fits"
                examples.append(ex)
                pairs.append(pair)
                if len(pairs) == n:
                    return examples, pairs
        if len(rows) < ask:  # the source is exhausted
            raise SystemExit(f"only {len(pairs)} {data} pairs fit in {max_length} tokens "
                             f"(prompt <= {max_prompt}); the run needs {n}")
        ask *= 2
