"""End-to-end preference learning on real data: DPO, SimPO (LoRA) and a reward model on
SmolLM2-135M-Instruct, trained on hh-rlhf harmless-base pairs, scored on held-out pairs.

    .venv/bin/python bench/preference_e2e.py --train 256 --heldout 128

Reads ../shared/data/hh-rlhf-harmless/test.jsonl.gz (skips with a message when absent),
writes the splits to a temporary directory, runs each method through `run_train_job` (the
same path as `tunefleet run`) and prints held-out accuracy before and after.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl.gz"


def split_pairs(n_train: int, n_heldout: int, out: Path) -> tuple[Path, Path]:
    """The first n_train valid pairs for training, the next n_heldout for evaluation."""
    from tunefleet.data.preference import preference_row_problem

    rows = [json.loads(line) for line in gzip.open(HH, "rt")]
    valid = [r for r in rows if preference_row_problem(r) is None]
    train, held = out / "train.jsonl", out / "heldout.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in valid[:n_train]))
    held.write_text("".join(json.dumps(r) + "\n" for r in valid[n_train:n_train + n_heldout]))
    return train, held


def run_method(name: str, train: Path, held: Path, args, extra: list[str]) -> dict:
    from tunefleet.config import load_config
    from tunefleet.pipelines.train_job import run_train_job

    steps = max(1, args.epochs * args.train // args.batch)
    overrides = [f"model.name={args.model}", "data.task=null", f"data.path={train}", f"data.eval_path={held}",
                 f"data.max_length={args.max_length}", "data.on_bad_row=skip", f"trainer.max_steps={steps}",
                 f"trainer.batch_size={args.batch}", f"trainer.micro_batch_size={args.batch}",
                 "trainer.cpus_per_worker=2", "trainer.warmup_steps=2", "checkpoint.every_steps=0",
                 "tracking.experiment=preference-e2e", *extra]
    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml", overrides)
    t0 = time.time()
    result = run_train_job(cfg)
    return {"method": name, "steps": steps, "seconds": round(time.time() - t0), "run_id": result.run_id,
            **{k: v for k, v in result.metrics.items() if k.startswith("eval/")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--heldout", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--methods", default="dpo,simpo,reward_model")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not HH.is_file():
        print(f"SKIP: {HH} is absent (../shared is only on developer/CI machines)")
        return 0
    extra = {"dpo": ["trainer.lr=5e-4", "algorithm.beta=0.1"], "simpo": ["trainer.lr=5e-4"],
             "reward_model": ["trainer.lr=5e-4", "model.lora.r=16"]}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        train, held = split_pairs(args.train, args.heldout, Path(tmp))
        for name in args.methods.split(","):
            results.append(run_method(name, train, held, args, extra.get(name, [])))
            print(json.dumps(results[-1]), flush=True)
    print("\n| method | steps | before | after | seconds |\n|---|---|---|---|---|")
    for r in results:
        before = {k[5:]: v for k, v in r.items() if k.endswith("_before")}
        after = {k[5:]: v for k, v in r.items() if k.endswith("_after")}
        print(f"| {r['method']} | {r['steps']} | {before} | {after} | {r['seconds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
