"""`tunefleet merge`: argparse wiring and the command (the work is in pipelines/merge_job.py).

Imports nothing heavy at module level: the CLI builds its parser from this on every call.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Merge two or more fine-tunes of the same base into one HF directory. A PARENT is an MLflow
training run id, a registered model models:/NAME/VERSION, an HF model directory or a LoRA
adapter directory (merged into its base first). Task vectors tau_i = parent_i - base:
  linear  base + scale * sum_i w_i tau_i                 (w_i default 1/n)
  ties    trim each tau_i to its top --density by magnitude, elect a sign per element,
          average the agreeing values                     (Yadav et al. 2023)
  dare    drop each element of tau_i with probability 1 - --density (seeded by --seed),
          rescale survivors by 1/density, then linear     (Yu et al. 2024)
  dare_ties  the DARE drop, then TIES's sign election
Parents of different bases, or with tensors of different names or shapes, fail before any
work. The result is logged as an MLflow model in experiment tunefleet-merge, evaluated on
the SUITEs given with --suite (as `tunefleet eval` runs them) and, with --register, becomes
a registry version whose parent column lists every parent."""

# models/merging.METHODS, spelled out here: importing it would import torch for every CLI call
METHOD_NAMES = ("linear", "ties", "dare", "dare_ties")
EXAMPLE = """example:
  tunefleet merge models:/arith-lora/1 models:/arith-lora/2 --out merged/arith-ties \\
      --method ties --density 0.5 --suite arith:1 --limit 50 --register arith-merged"""


def add_merge_parser(sub) -> None:
    """The `merge` subcommand's parser, under `sub` (the CLI's subparsers)."""
    sp = sub.add_parser("merge", help="merge fine-tunes of one base (linear, TIES, DARE); evaluate and register",
                        description=DESCRIPTION, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("parents", nargs="+", metavar="PARENT", help="run id, models:/NAME/VERSION, HF dir or adapter dir")
    sp.add_argument("--out", required=True, metavar="DIR", help="new directory to write the merged model to")
    sp.add_argument("--method", choices=METHOD_NAMES, default="linear")
    sp.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                    help="one weight per parent (default: 1/n; TIES: 1 each)")
    sp.add_argument("--density", type=float, default=None, metavar="D",
                    help="TIES: fraction of each task vector kept; DARE: 1 - drop probability (default 0.5 for "
                    "ties/dare, 1 for linear)")
    sp.add_argument("--scale", type=float, default=1.0, metavar="L", help="lambda on the merged task vector")
    sp.add_argument("--seed", type=int, default=0, help="DARE's drop masks; eval sampling")
    sp.add_argument("--base", default=None, help="the parents' base model (default: the base they record)")
    sp.add_argument("--suite", action="append", default=[], metavar="SUITE",
                    help="evaluate the merge on SUITE, as `tunefleet eval` takes it (repeatable)")
    sp.add_argument("--limit", type=int, default=None, help="first N rows per file suite; N problems per task level")
    sp.add_argument("--register", metavar="NAME", default=None, help="also create a version of registered model NAME")
    sp.add_argument("--experiment", default="tunefleet-merge")
    sp.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the local store")


def merge_command(args) -> int:
    """Run `tunefleet merge`; a bad merge exits 2 with `merge error: ...` before any work."""
    from tunefleet.data.readers import DataError
    from tunefleet.eval.suites import SuiteError
    from tunefleet.models.merging import MergeError
    from tunefleet.pipelines.merge_job import MergeRequest, run_merge

    density = args.density if args.density is not None else (1.0 if args.method == "linear" else 0.5)
    req = MergeRequest(tuple(args.parents), args.out, args.method, tuple(args.weights) if args.weights else None,
                       density, args.scale, args.seed, args.base, tuple(args.suite), args.limit, args.register,
                       args.tracking_uri, args.experiment)
    try:
        res = run_merge(req)
    except (MergeError, SuiteError, DataError) as err:
        print(f"merge error: {err}", file=sys.stderr)
        return 2
    reg = f"; registered models:/{args.register}/{res.version}" if res.version else ""
    for name, value in res.metrics.items():
        print(f"{name}={value:.4g}", flush=True)
    print(f"merged {len(req.parents)} parents ({req.method}) -> {res.out}; MLflow run {res.run_id}, "
          f"model {res.model_uri}{reg}", flush=True)
    return 0
