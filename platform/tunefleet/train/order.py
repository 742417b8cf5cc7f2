"""A seeded global sample order that does not depend on the world size.

Position p of the stream (p = step * batch_size + j) is sample perm(epoch)[p % N] with
epoch = p // N. Any worker can compute any step's global batch from (seed, step) alone,
so a resumed or resized run neither skips nor repeats a sample.
"""

from __future__ import annotations

import random
from functools import lru_cache


class GlobalOrder:
    """Deterministic epoch-wise permutations of range(n)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n <= 0:
            raise ValueError("empty dataset: nothing to train on")
        self.n, self.seed, self.shuffle = n, seed, shuffle

    @lru_cache(maxsize=4)  # noqa: B019 - one order per run, alive as long as the run
    def permutation(self, epoch: int) -> tuple[int, ...]:
        idx = list(range(self.n))
        if self.shuffle:
            random.Random(f"tunefleet-order-{self.seed}-{epoch}").shuffle(idx)
        return tuple(idx)

    def batch(self, step: int, batch_size: int) -> list[int]:
        """Global sample indices of optimizer step `step` (0-based)."""
        out = []
        for p in range(step * batch_size, (step + 1) * batch_size):
            out.append(self.permutation(p // self.n)[p % self.n])
        return out

    def epoch_of(self, step: int, batch_size: int) -> float:
        return step * batch_size / self.n


def rank_micro_batches(global_batch: list[int], rank: int, world: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's contiguous share of the global batch, split into micro-batches."""
    per_rank = len(global_batch) // world
    mine = global_batch[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
