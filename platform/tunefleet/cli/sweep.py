"""`tunefleet sweep CAMPAIGN [overrides]`: argparse wiring and the command (the work is in
pipelines/sweep_job.py). Imports nothing heavy at module level."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Run a campaign file (see jobs/campaigns/): trials drawn from its conditional space of
methods and hyperparameters, each a real training run on Ray Train, scheduled by Ray Tune
(ASHA stops trials that trail at its rungs). Overrides `campaign.x=...`/`space.x=...` change
the campaign; any other (`model.name=tiny-llama`) goes to every trial. MLflow: one parent
run with the leaderboard and plots, one child run per trial."""
EXAMPLE = """examples:
  tunefleet sweep jobs/campaigns/methods.yaml campaign.num_samples=4 model.name=tiny-llama
  tunefleet sweep --resume methods-20261203-101500"""


def add_sweep_parser(sub) -> None:
    """The `sweep` subcommand's parser, under `sub` (the CLI's subparsers)."""
    sp = sub.add_parser("sweep", help="run a campaign: method/hyperparameter trials on Ray Tune, leaderboard in MLflow",
                        description=DESCRIPTION, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("campaign", nargs="?", help="campaign YAML file (top-level campaign: and space:)")
    sp.add_argument("--resume", metavar="NAME", default=None,
                    help="continue campaign NAME (printed as `[sweep] campaign NAME: ...`) after its driver died: "
                    "finished trials are kept, unfinished ones continue from their checkpoints")
    sp.add_argument("overrides", nargs="*", help="campaign.x=... / space.x=... or run-config overrides for every trial")
    sp.add_argument("--tracking-uri", default=None, help="default: the base config's tracking.uri, "
                    "MLFLOW_TRACKING_URI or the local store")


def sweep_command(args, ship_package: bool = False) -> int:
    """Load (exit 2 with `config error: ...` on a bad campaign), run, print the best trial."""
    from tunefleet.config import ConfigError
    from tunefleet.config.campaign import load_campaign
    from tunefleet.pipelines.sweep_job import run_sweep

    try:
        if args.resume and (args.campaign or args.overrides):
            raise ConfigError("--resume", "takes only the campaign NAME: a resumed campaign runs the trials it "
                              "planned (no campaign file, no overrides)")
        if not args.resume and not args.campaign:
            raise ConfigError("campaign", "missing; allowed: a campaign YAML file, or --resume NAME")
        campaign = None if args.resume else load_campaign(args.campaign, args.overrides)
        result = run_sweep(campaign, args.tracking_uri, ship_package=ship_package, resume=args.resume)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    best = result.best
    if best is not None:
        print(f"best: {best.trial_id} {best.method} {best.hyperparameters()} {result.metric}={best.objective:.4g} "
              f"(MLflow run {best.run_id})", flush=True)
    print(f"MLflow run id: {result.parent_run_id}", flush=True)
    return 0
