"""Where a training step's batch comes from. The loop (loop.py) is the same for every
method; only the source differs:

- DatasetSource: fixed tokenized rows in a seeded, world-size-independent global order
  (SFT, preference methods, reward models).
- RolloutSource (rollout_source.py): prompts sampled by the RolloutPool, scored by reward
  functions, with advantages; the new weights go back to the pool after each step (RL).

A source has `start(step, saved)` (after resume, with the checkpoint's state.json), `plan(step) -> StepPlan`,
`after_step(done)` -> metrics, `state()` -> what a checkpoint must remember, and `close()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tunefleet import storage
from tunefleet.train.order import GlobalOrder, rank_micro_batches
from tunefleet.train.step import count_targets


@dataclass
class StepPlan:
    """This rank's collated micro-batches, the *global* target-token and sequence counts
    every loss normalises by (so the result does not depend on how the batch is split), and
    metrics about the batch itself."""

    micro_batches: list[dict]
    num_tokens: int
    num_sequences: int
    metrics: dict[str, float] = field(default_factory=dict)


def plan_rows(rows: list[dict], global_idx: list[int], rank: int, world: int, micro: int, batcher,
              pad_id: int, num_tokens: int | None = None) -> StepPlan:
    """Split the global batch `rows[global_idx]` into this rank's collated micro-batches."""
    batch_rows = [rows[i] for i in global_idx]
    if batcher.prepare is not None:  # what depends on the whole step's rows (KTO's KL pairs)
        batch_rows = batcher.prepare(batch_rows)
    if num_tokens is None:
        num_tokens = count_targets(batcher.collate(batch_rows, pad_id))
    mine = [batcher.collate([batch_rows[j] for j in chunk], pad_id)
            for chunk in rank_micro_batches(list(range(len(batch_rows))), rank, world, micro)]
    return StepPlan(mine, num_tokens, batcher.sequences(batch_rows))


class DatasetSource:
    """Training rows shipped by the driver (`loop_config["data_ref"]`), in GlobalOrder."""

    def __init__(self, cfg, loop_config: dict, ctx, rank: int, world: int, reporter=None):
        import ray

        from tunefleet.data.batching import BATCHERS

        self.rows = ray.get(loop_config["data_ref"])
        self.batcher = BATCHERS[cfg.algorithm.BATCH]
        self.order = GlobalOrder(len(self.rows), cfg.trainer.seed)
        self.trainer, self.rank, self.world, self.pad_id = cfg.trainer, rank, world, loop_config["pad_id"]
        self.sample_log = loop_config.get("sample_log") if rank == 0 else None

    def start(self, step: int, saved: dict) -> None:
        """Nothing to restore: the order is a function of (seed, step)."""

    def plan(self, step: int) -> StepPlan:
        t = self.trainer
        ids = self.order.batch(step, t.batch_size)
        if self.sample_log:  # evidence for exactly-once: which rows each step trained on
            storage.append_line(self.sample_log, json.dumps({"step": step + 1, "world": self.world, "ids": ids}))
        plan = plan_rows(self.rows, ids, self.rank, self.world, t.micro_batch_size, self.batcher, self.pad_id)
        plan.metrics["epoch"] = self.order.epoch_of(step + 1, t.batch_size)
        return plan

    def after_step(self, done: int) -> dict[str, float]:
        return {}

    def state(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def make_source(cfg, loop_config: dict, ctx, rank: int, world: int, reporter=None):
    """The source for the algorithm's batch layout (`BATCH`), never for its name."""
    if cfg.algorithm.BATCH == "rl":
        from tunefleet.train.rollout_source import RolloutSource

        return RolloutSource(cfg, loop_config, ctx, rank, world, reporter)
    return DatasetSource(cfg, loop_config, ctx, rank, world, reporter)
