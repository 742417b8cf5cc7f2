"""A sample of an RL step's rollouts as a Parquet artifact (rank 0, every N steps), so a
run's MLflow page shows what the policy actually wrote and how it was scored."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MAX_GROUPS = 8  # enough to read, small enough to log often


def sample_table(step: int, prompts: list[dict], groups: list[dict]) -> pa.Table:
    """One row per sample: step, prompt, answer, completion, reward, components (JSON),
    finish reason, policy version, tokens."""
    rows = []
    for p, g in list(zip(prompts, groups))[:MAX_GROUPS]:
        for s, reward, parts in zip(g["samples"], g["rewards"], g["parts"]):
            rows.append({"step": step, "prompt": p["prompt"], "answer": p["answer"], "completion": s.text,
                         "reward": float(reward), "components": json.dumps(parts, sort_keys=True),
                         "finish_reason": s.finish_reason, "version": int(s.version),
                         "tokens": len(s.token_ids)})
    return pa.Table.from_pylist(rows)


def log_rollout_sample(tracker, step: int, prompts: list[dict], groups: list[dict]) -> None:
    """Write the sample and log it under `rollouts/step_XXXXXX.parquet`. The file stays on
    disk: during a tracking outage the tracker uploads it later, when it replays."""
    folder = Path(tempfile.gettempdir()) / f"tunefleet-rollouts-{tracker.run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.parquet"
    pq.write_table(sample_table(step, prompts, groups), path)
    tracker.log_artifact(str(path), "rollouts")
