"""Base-model accuracy per difficulty level of the built-in tasks (DESIGN.md section 5).

    .venv/bin/python bench/task_calibration.py --model smollm2-135m-instruct --n 64

RL needs a signal: the default level of each task should have the base model right
roughly 10-50% of the time. Greedy decoding, chat template, the tasks' own verifiers.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tunefleet.data import TASKS
from tunefleet.eval.exact_match import task_accuracy
from tunefleet.models.registry import load_model, load_tokenizer, resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--levels", default="1,2,3,4,5")
    ap.add_argument("--tasks", default="arith,reverse")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = resolve_model(args.model)
    model, tok = load_model(path, dtype="bfloat16"), load_tokenizer(path)
    results = []
    for name in args.tasks.split(","):
        for level in (int(x) for x in args.levels.split(",")):
            problems = TASKS[name].generate("eval", args.n, seed=0, level=level)
            t0 = time.time()
            res = task_accuracy(model, tok, TASKS[name], problems, args.max_new_tokens, batch_size=64, label=name)
            results.append({"task": name, "level": level, "accuracy": res.accuracy, "n": res.total,
                            "seconds": round(time.time() - t0, 1), "example": res.samples[0]["completion"][:80]})
            print(json.dumps(results[-1]), flush=True)
    print("\n| task | level | base accuracy | n |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['task']} | {r['level']} | {r['accuracy']:.2f} | {r['n']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
