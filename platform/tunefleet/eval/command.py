"""`tunefleet eval`: argparse wiring and the command (the work is in eval/runner.py).

Imports nothing heavy at module level: the CLI builds its parser from this on every call.
"""

from __future__ import annotations

import sys


def add_eval_parser(sub) -> None:
    """The `eval` subcommand's argparse parser, under `sub` (the CLI's subparsers)."""
    sp = sub.add_parser("eval", help="evaluate a model on suites (exact match, multiple choice, perplexity, lm-eval)",
                        description="SUITE: arith, arith:3, arith:1-3 (one suite per level), reverse[:L], "
                        "gsm8k:PATH (question/answer '#### N'), mc:PATH (question/choices/answer index), "
                        "ppl:PATH (text or messages). Greedy generation; one line per suite, then one JSON line.")
    sp.add_argument("target", help="model alias, HF directory, LoRA adapter directory or MLflow run id")
    sp.add_argument("suites", nargs="*", metavar="SUITE", help="suites to run (see above)")
    sp.add_argument("--lm-eval", action="append", default=[], metavar="TASK_YAML",
                    help="also run an lm-evaluation-harness task file (repeatable)")
    sp.add_argument("--limit", type=int, default=None, help="first N rows per file suite; N problems per task "
                    "level (default 100)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--max-new-tokens", type=int, default=256)
    sp.add_argument("--batch-size", type=int, default=8, help="log-likelihood batch size")
    sp.add_argument("--base", default=None, help="base model of an adapter TARGET (default: from adapter_config)")
    sp.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    sp.add_argument("--experiment", default="tunefleet-eval")
    sp.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the local store")


def eval_command(args) -> int:
    """Run `tunefleet eval`; bad input exits 2 with `eval error: ...` before any model loads."""
    from tunefleet.data.readers import DataError
    from tunefleet.eval.runner import EvalRequest, run_eval
    from tunefleet.eval.suites import SuiteError
    from tunefleet.eval.targets import TargetError

    req = EvalRequest(args.target, tuple(args.suites), tuple(args.lm_eval), args.limit, args.seed,
                      args.max_new_tokens, args.batch_size, base=args.base, dtype=args.dtype,
                      tracking_uri=args.tracking_uri, experiment=args.experiment)
    try:
        outcome = run_eval(req)
    except (DataError, SuiteError, TargetError) as err:
        print(f"eval error: {err}", file=sys.stderr)
        return 2
    for line in outcome.suite_lines():
        print(line, flush=True)
    print(outcome.summary_line(), flush=True)
    return 0
