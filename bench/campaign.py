"""ASHA against the full grid, on the same space and seeds: how much compute ASHA needs to
reach the best score the whole grid finds.

Two `tunefleet sweep` campaigns over one grid of methods x hyperparameters (SFT and DPO,
learning rates, DPO's beta), the same trials in the same order with the same seeds:
  - grid: `scheduler: fifo`, every trial trained to the end;
  - asha: `scheduler: asha`, rungs counted in training tokens.
Compute is CPU-seconds (each trial's CPUs x its wall time, the campaign's own accounting).
The result: ASHA's CPU-seconds until one of its trials first reached the grid's best score,
over the grid's total CPU-seconds. Goal (issue 16): 0.35x or less.

    .venv/bin/python bench/campaign.py                    # tiny-llama, 9 trials
    .venv/bin/python bench/campaign.py --steps 60 --json /tmp/campaign.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def campaign_yaml(tmp: Path, scheduler: str, args) -> Path:
    """The campaign file: the same grid for both schedulers; only `scheduler` differs."""
    ppl = tmp / "text.jsonl"
    ppl.write_text("".join(json.dumps({"text": f"{a} + {b} = {a + b}"}) + "\n" for a in range(4) for b in range(4)))
    sched = {"fifo": "{type: fifo}",  # max_tokens is only read for asha, after the grid ran
             "asha": f"{{type: asha, reduction_factor: {args.rf}, rungs: {args.rungs}, max_tokens: {args.max_tokens}}}"}
    path = tmp / f"{scheduler}.yaml"
    path.write_text(textwrap.dedent(f"""\
        campaign:
          name: bench-{scheduler}
          overrides: [model.name={args.model}, data.task=arith, data.level=1, data.num_train=256, data.num_eval=0,
                      data.max_length=128, trainer.batch_size=8, trainer.micro_batch_size=8,
                      trainer.max_steps={args.steps}, trainer.num_workers=1, trainer.seed=0, checkpoint.every_steps=0,
                      'eval.suites=[ppl:{ppl}]', eval.limit=16, eval.every_steps={args.steps},
                      'tracking.uri=sqlite:///{tmp}/mlflow.db', tracking.experiment=bench-{scheduler}]
          search: grid
          scheduler: {sched[scheduler]}
          objective: {{metric: eval/ppl_text/word_perplexity, mode: min}}
          budget: {{max_concurrent: 1}}
        space:
          common:
            trainer.lr: {{grid: [3.0e-4, 3.0e-3, 3.0e-2]}}
          methods:
            sft: {{}}
            dpo: {{beta: {{grid: [0.1, 0.5]}}}}
        """))
    return path


def run(scheduler: str, tmp: Path, args):
    from tunefleet.config.campaign import load_campaign
    from tunefleet.pipelines.sweep_job import run_sweep

    started = time.monotonic()
    result = run_sweep(load_campaign(campaign_yaml(tmp, scheduler, args)))
    return result, time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--steps", type=int, default=90, help="a full trial's steps (every grid trial trains them)")
    p.add_argument("--max-tokens", type=int, default=None, help="ASHA top rung (default: the longest grid trial's)")
    p.add_argument("--rf", type=int, default=3)
    p.add_argument("--rungs", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args()
    if args.rf < 3 or args.rungs < 3:
        p.error("the comparison needs at least 3 rungs and a reduction factor of at least 3")
    from tunefleet.cluster import init_ray, shutdown_ray
    from tunefleet.pipelines.leaderboard import compute_to_best

    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-campaign-") as tmp:
        os.environ.setdefault("TUNEFLEET_HOME", str(Path(tmp) / "home"))
        init_ray()
        try:
            grid, grid_s = run("fifo", Path(tmp), args)
            # ASHA's top rung: what the longest full trial trained (measured on the grid itself)
            args.max_tokens = args.max_tokens or int(max(r.train_tokens or 0 for r in grid.rows))
            asha, asha_s = run("asha", Path(tmp), args)
        finally:
            shutdown_ray()
    best = grid.best.objective
    total = compute_to_best(grid.rows, grid.mode)["cpu_seconds_total"]
    reached = compute_to_best(asha.rows, asha.mode, target=best)
    out = {"model": args.model, "trials": len(grid.rows), "steps": args.steps, "rungs": args.rungs, "rf": args.rf,
           "max_tokens": args.max_tokens, "grid_best": best, "grid_best_trial": grid.best.trial_id,
           "grid_cpu_seconds": total, "grid_wall_s": grid_s, "asha_best": asha.best.objective,
           "asha_best_trial": asha.best.trial_id, "asha_wall_s": asha_s,
           "asha_cpu_seconds_total": compute_to_best(asha.rows, asha.mode)["cpu_seconds_total"],
           "asha_stopped": sum(r.status == "stopped" for r in asha.rows),
           "asha_cpu_seconds_to_grid_best": reached["cpu_seconds_to_best"] if reached else None}
    out["ratio"] = out["asha_cpu_seconds_to_grid_best"] / total if reached else None
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    ratio = f"{out['ratio']:.3f}x" if reached else "never reached"
    print(f"campaign bench: ASHA reached the grid's best ({best:.4g}, {grid.best.trial_id}) with {ratio} of the "
          f"full grid's {total:.0f} CPU-s ({out['asha_stopped']}/{len(asha.rows)} trials stopped; "
          f"grid {grid_s:.0f} s, asha {asha_s:.0f} s wall)", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "platform"))
    sys.exit(main())
