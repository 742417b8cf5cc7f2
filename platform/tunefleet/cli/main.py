"""`tunefleet run | validate | score | demo`.

Config errors exit with status 2 before anything heavy is imported; the last line a run
prints is one line of JSON: {"run_id": ..., "metrics": {...}, "artifacts": [...]}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunefleet.config import ConfigError, load_config

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunefleet", description="Elastic LLM post-training on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "validate a config, then run the job"), ("validate", "only check a config")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("config", help="YAML config file")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.num_workers=2")
    sp = sub.add_parser("score", help="score rows with a trained reward model; writes Parquet with a reward column")
    sp.add_argument("model", help="a reward model's exported model/ or adapter/ directory")
    sp.add_argument("input", help="JSONL/Parquet rows (prompt/completion, messages or question/answer)")
    sp.add_argument("output", help="Parquet file to write")
    sp.add_argument("--base", default=None, help="base model for an adapter (default: from adapter_config.json)")
    sp.add_argument("--on-bad-row", default="error", choices=["error", "skip"])
    sp = sub.add_parser("demo", help="LoRA SFT of SmolLM2-135M-Instruct on the arith task, with eval before/after")
    sp.add_argument("overrides", nargs="*", help="dotted overrides for the demo config")
    return p


def _load(path: str | Path, overrides: list[str]):
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(cfg, ship_package: bool) -> int:
    from tunefleet.pipelines.train_job import run_train_job

    result = run_train_job(cfg, ship_package=ship_package)
    print(f"MLflow run id: {result.run_id}", flush=True)
    print(result.summary_line(), flush=True)
    return 0


def main(argv: list[str] | None = None, ship_package: bool = False) -> int:
    """Entry point of the `tunefleet` console script and of jobs/run.py."""
    args = _parser().parse_args(argv)
    if args.command == "score":
        from tunefleet.eval.reward_scorer import score_file

        n = score_file(args.model, args.input, args.output, args.base, args.on_bad_row)
        print(f"scored {n} rows -> {args.output}")
        return 0
    if args.command == "demo":
        return _run(_load(DEMO_CONFIG, args.overrides), ship_package)
    cfg = _load(args.config, args.overrides)
    if args.command == "validate":
        print(f"OK: {args.config} (algorithm.type={cfg.algorithm.type}, model.name={cfg.model.name}, "
              f"trainer.num_workers={cfg.trainer.num_workers})")
        return 0
    return _run(cfg, ship_package)


if __name__ == "__main__":
    raise SystemExit(main())
