"""The pool's bookkeeping, free of Ray so it can be unit-tested: which requests wait, which
run where, which are done (exactly once), which engine gets the next chunk, and how fast
tokens come out.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field

from tunefleet.rollout.samples import Request, Rollout


class Ledger:
    """Every request is in exactly one state: pending (queued), running (in an engine call)
    or finished. `finish` accepts a request's result only once, so a chunk that is retried
    after an engine died can never deliver a prompt twice.
    """

    def __init__(self):
        self.pending: collections.deque[Request] = collections.deque()
        self.running: dict[int, Request] = {}
        self.finished: set[int] = set()

    def add(self, requests: list[Request]) -> None:
        self.pending.extend(requests)

    def take(self, k: int) -> list[Request]:
        """Move up to `k` pending requests (oldest first) to running."""
        chunk = [self.pending.popleft() for _ in range(min(k, len(self.pending)))]
        self.running.update({r.id: r for r in chunk})
        return chunk

    def requeue(self, requests: list[Request]) -> None:
        """Put running (or finished-but-stale) requests back at the front, in order."""
        for r in reversed(requests):
            self.running.pop(r.id, None)
            self.finished.discard(r.id)
            self.pending.appendleft(r)

    def finish(self, rollout: Rollout) -> bool:
        """Record a result; False (drop it) unless its request was running."""
        if self.running.pop(rollout.request_id, None) is None:
            return False
        self.finished.add(rollout.request_id)
        return True

    def forget(self, request_id: int) -> None:
        """A delivered request leaves the ledger (keeps it small over a long run)."""
        self.finished.discard(request_id)


@dataclass
class EngineLoad:
    """What the dispatcher knows about one engine."""

    index: int
    ready: bool = False
    calls: int = 0  # engine calls in flight
    prompts: int = 0  # sum of n over the requests in flight


def pick_engine(engines: list[EngineLoad], max_calls: int) -> EngineLoad | None:
    """The ready engine with the fewest prompts in flight (ties: lowest index) that has
    room for another call, or None."""
    free = [e for e in engines if e.ready and e.calls < max_calls]
    return min(free, key=lambda e: (e.prompts, e.index)) if free else None


def chunk_size(pending: int, ready_engines: int, max_per_call: int) -> int:
    """Spread the queue evenly over the ready engines, at most `max_per_call` per call."""
    if pending <= 0:
        return 0
    return max(1, min(max_per_call, math.ceil(pending / max(1, ready_engines))))


def is_stale(sample_version: int, current_version: int, max_staleness: int) -> bool:
    """A sample is stale when its policy is more than `max_staleness` versions behind."""
    return current_version - sample_version > max_staleness


@dataclass
class RateMeter:
    """Tokens per second over the last `window_s` seconds."""

    window_s: float = 30.0
    events: collections.deque = field(default_factory=collections.deque)
    total: int = 0

    def add(self, tokens: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.events.append((now, tokens))
        self.total += tokens
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if not self.events:
            return 0.0
        span = max(now - self.events[0][0], 1e-6)
        return sum(t for _, t in self.events) / max(span, min(self.window_s, 1.0))

    def _trim(self, now: float) -> None:
        while self.events and now - self.events[0][0] > self.window_s:
            self.events.popleft()
