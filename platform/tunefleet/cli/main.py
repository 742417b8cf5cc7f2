"""`tunefleet run | validate | score | generate | export | models | eval | merge | sweep | demo`.

Config errors exit with status 2 before anything heavy is imported; the last line a run
prints is one line of JSON: {"run_id": ..., "metrics": {...}, "artifacts": [...]}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunefleet.cli.merge import add_merge_parser, merge_command
from tunefleet.cli.sweep import add_sweep_parser, sweep_command
from tunefleet.config import ConfigError, load_config
from tunefleet.eval.command import add_eval_parser, eval_command

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
DEMO_CAMPAIGN = Path(__file__).with_name("demo_campaign.yaml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunefleet", description="Elastic LLM post-training on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "validate a config, then run the job"), ("validate", "only check a config")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("config", nargs="?" if name == "run" else None, help="YAML config file")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.num_workers=2")
    run = sub.choices["run"]
    run.add_argument("--resume", metavar="RUN_ID", default=None,
                     help="continue a stopped run (its MLflow run id) from its newest checkpoint")
    run.add_argument("--tracking-uri", default=None, help="where to find the run for --resume "
                     "(default: MLFLOW_TRACKING_URI or the local store)")
    sp = sub.add_parser("score", help="score rows with a trained reward model; writes Parquet with a reward column")
    sp.add_argument("model", help="a reward model's exported model/ or adapter/ directory")
    sp.add_argument("input", help="JSONL/Parquet rows (prompt/completion, messages or question/answer)")
    sp.add_argument("output", help="Parquet file to write")
    sp.add_argument("--base", default=None, help="base model for an adapter (default: from adapter_config.json)")
    sp.add_argument("--on-bad-row", default="error", choices=["error", "skip"])
    sp = sub.add_parser("generate", help="generate samples for a prompt file with vLLM; writes Parquet, logs lineage")
    sp.add_argument("model", help="model alias or HF directory (the base, with --adapter)")
    sp.add_argument("prompts", help="JSONL/Parquet rows with a prompt field")
    sp.add_argument("output", help="Parquet file to write")
    sp.add_argument("--adapter", default=None, help="a trained LoRA adapter directory, served without merging")
    sp.add_argument("--prompt-field", default="prompt")
    sp.add_argument("--raw", action="store_true", help="send prompts as they are (no chat template)")
    sp.add_argument("--n", type=int, default=1, help="samples per prompt")
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--max-tokens", type=int, default=128)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--engines", type=int, default=1)
    sp.add_argument("--cpus-per-engine", type=float, default=1.0)
    sp.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    sp.add_argument("--source-run-id", default=None, help="the MLflow run that trained the model (lineage tag)")
    sp.add_argument("--experiment", default="tunefleet-generate")
    sp = sub.add_parser("export", help="a run's checkpoint -> one HF directory (LoRA merged); logged to MLflow")
    sp.add_argument("run_id", help="the training run's MLflow run id")
    sp.add_argument("out", help="new directory to write (safetensors, tokenizer, chat template, lineage)")
    sp.add_argument("--checkpoint", type=int, default=None, metavar="N",
                    help="export checkpoint_N (default: the newest verified one with an export/)")
    sp.add_argument("--register", metavar="NAME", default=None, help="also create a new version of registered "
                    "model NAME in the MLflow Model Registry, tagged with its lineage")
    sp.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the local store")
    sp = sub.add_parser("models", help="list registered model versions with their lineage")
    sp.add_argument("name", nargs="?", default=None, help="only this registered model")
    sp.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the local store")
    add_eval_parser(sub)
    add_merge_parser(sub)
    add_sweep_parser(sub)
    sp = sub.add_parser("demo", help="LoRA SFT of SmolLM2-135M-Instruct on the arith task, with eval before/after; "
                        "--campaign: LoRA-SFT vs DPO vs GRPO on it under ASHA")
    sp.add_argument("overrides", nargs="*", help="dotted overrides (with --campaign: campaign.x / space.x, or for "
                    "every trial)")
    sp.add_argument("--campaign", action="store_true", help="the method campaign (cli/demo_campaign.yaml)")
    sp.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the local store")
    return p


def _load(path: str | Path, overrides: list[str]):
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _is_campaign(path: str) -> bool:
    from tunefleet.config.campaign import is_campaign_file

    return Path(path).is_file() and is_campaign_file(path)


def _validate_campaign(path: str, overrides: list[str]) -> int:
    """Every method of the space, at every corner of its hyperparameters, is a valid run."""
    from tunefleet.config.campaign import load_campaign
    from tunefleet.pipelines.sweep_job import plan

    try:
        c = load_campaign(path, overrides)
        trials = plan(c, c.campaign.name, None)[0]  # the trials as `tunefleet sweep` would start them
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    count = c.campaign.num_samples if c.campaign.search == "optuna" else len(trials)
    print(f"OK: {path} (campaign {c.campaign.name}: methods {', '.join(sorted(c.space.methods))}, "
          f"{count} trial(s), search {c.campaign.search}, scheduler {c.campaign.scheduler.type})")
    return 0


def _load_resume(args):
    from tunefleet.pipelines.resume import config_for_resume

    # With --resume a positional word is an override too (there is no config file).
    overrides = ([args.config] if args.config else []) + list(args.overrides)
    try:
        return config_for_resume(args.resume, overrides, args.tracking_uri)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# algorithm.JOB -> the job that runs it: "module:function(cfg, ship_package) -> JobResult".
JOBS = {"train": "tunefleet.pipelines.train_job:run_train_job",
        "selfplay": "tunefleet.pipelines.selfplay_job:run_selfplay_job"}


def _run(cfg, ship_package: bool) -> int:
    import importlib

    from tunefleet.pipelines.selfplay_data import NoTrainingData

    module, fn = JOBS[cfg.algorithm.JOB].split(":")
    try:
        result = getattr(importlib.import_module(module), fn)(cfg, ship_package=ship_package)
    except NoTrainingData as err:
        print(f"self-play stopped: {err}", file=sys.stderr)
        return 1
    print(f"MLflow run id: {result.run_id}", flush=True)
    print(result.summary_line(), flush=True)
    return 0


def _generate(args) -> int:
    from tunefleet.pipelines.generate_job import GenerateRequest, run_generate

    req = GenerateRequest(args.model, args.prompts, args.output, adapter=args.adapter, prompt_field=args.prompt_field,
                          chat=not args.raw, n=args.n, temperature=args.temperature, top_p=args.top_p,
                          max_tokens=args.max_tokens, seed=args.seed, num_engines=args.engines,
                          cpus_per_engine=args.cpus_per_engine, dtype=args.dtype, source_run_id=args.source_run_id,
                          experiment=args.experiment)
    result, run_id = run_generate(req)
    print(f"generated {result.rows} rows -> {result.path} (sha256 {result.digest[:16]}, policy versions "
          f"{list(result.versions)}); MLflow run id: {run_id}", flush=True)
    return 0


def _export_or_list(args) -> int:
    from tunefleet.models.export import ExportError
    from tunefleet.pipelines.export_job import ExportRequest, list_models, run_export

    if args.command == "models":
        print(list_models(args.name, args.tracking_uri))
        return 0
    try:
        res = run_export(ExportRequest(args.run_id, args.out, args.checkpoint, args.register, args.tracking_uri))
    except ExportError as err:
        print(f"export error: {err}", file=sys.stderr)
        return 2
    reg = f"; registered models:/{args.register}/{res.version}" if res.version else ""
    print(f"exported step {res.step} -> {res.out}; MLflow model {res.model_uri}{reg}", flush=True)
    return 0


def main(argv: list[str] | None = None, ship_package: bool = False) -> int:
    """Entry point of the `tunefleet` console script and of jobs/run.py."""
    args = _parser().parse_args(argv)
    if args.command == "score":
        from tunefleet.eval.reward_scorer import score_file

        n = score_file(args.model, args.input, args.output, args.base, args.on_bad_row)
        print(f"scored {n} rows -> {args.output}")
        return 0
    if args.command == "generate":
        return _generate(args)
    if args.command == "eval":
        return eval_command(args)
    if args.command == "merge":
        return merge_command(args)
    if args.command == "sweep":
        return sweep_command(args, ship_package)
    if args.command in ("export", "models"):
        return _export_or_list(args)
    if args.command == "demo" and args.campaign:
        args.campaign, args.resume = str(DEMO_CAMPAIGN), None
        return sweep_command(args, ship_package)
    if args.command == "demo":
        return _run(_load(DEMO_CONFIG, args.overrides), ship_package)
    if args.command == "run" and args.resume:
        return _run(_load_resume(args), ship_package)
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        # No file, only overrides: the config is built from the defaults and them alone.
        args.overrides, args.config = [args.config, *args.overrides], None
        if not any(o.startswith("model.") for o in args.overrides):
            print("config error: give a config file, overrides including model.name=..., or --resume RUN_ID",
                  file=sys.stderr)
            return 2
    elif args.config is None:
        print("config error: a config file (or --resume RUN_ID) is required", file=sys.stderr)
        return 2
    if args.command == "validate" and _is_campaign(args.config):
        return _validate_campaign(args.config, args.overrides)
    cfg = _load(args.config, args.overrides)
    if args.command == "validate":
        print(f"OK: {args.config} (algorithm.type={cfg.algorithm.type}, model.name={cfg.model.name}, "
              f"trainer.num_workers={cfg.trainer.num_workers})")
        return 0
    return _run(cfg, ship_package)


if __name__ == "__main__":
    raise SystemExit(main())
