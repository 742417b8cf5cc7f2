"""Pool bookkeeping without Ray: exactly-once ledger, least-loaded choice, chunking, staleness."""

from tunefleet.rollout.dispatch import EngineLoad, Ledger, RateMeter, chunk_size, is_stale, pick_engine
from tunefleet.rollout.samples import Request, Rollout, Sampling


def _reqs(n):
    return [Request(i, f"p{i}", Sampling()) for i in range(n)]


def _done(i, version=0):
    return Rollout(i, f"p{i}", [], [], version, 0)


def test_ledger_accepts_each_result_once_even_after_a_retry():
    ledger = Ledger()
    ledger.add(_reqs(5))
    first = ledger.take(3)
    assert [r.id for r in first] == [0, 1, 2] and len(ledger.pending) == 2
    ledger.requeue(first)  # the engine died: back to the front, same order
    assert [r.id for r in ledger.pending] == [0, 1, 2, 3, 4] and not ledger.running
    again = ledger.take(5)
    assert [ledger.finish(_done(r.id)) for r in again] == [True] * 5
    assert not ledger.finish(_done(2))  # a late duplicate of a finished request is dropped
    assert ledger.finished == {0, 1, 2, 3, 4}
    ledger.forget(0)
    assert 0 not in ledger.finished


def test_ledger_drops_results_of_requests_that_are_not_running():
    ledger = Ledger()
    ledger.add(_reqs(2))
    assert not ledger.finish(_done(0))  # still pending: not dispatched, so not acceptable


def test_pick_engine_is_least_loaded_ready_with_room():
    loads = [EngineLoad(0, True, calls=1, prompts=8), EngineLoad(1, True, calls=1, prompts=3),
             EngineLoad(2, False), EngineLoad(3, True, calls=2, prompts=0)]
    assert pick_engine(loads, max_calls=2).index == 1  # 3 is full (2 calls), 2 not ready
    loads[1].calls = 2
    assert pick_engine(loads, max_calls=2).index == 0
    loads[0].calls = 2
    assert pick_engine(loads, max_calls=2) is None
    ties = [EngineLoad(1, True), EngineLoad(0, True)]
    assert pick_engine(ties, max_calls=1).index == 0


def test_chunk_size_spreads_the_queue_over_ready_engines():
    assert chunk_size(64, 2, 64) == 32
    assert chunk_size(64, 2, 8) == 8
    assert chunk_size(5, 2, 64) == 3
    assert chunk_size(1, 4, 64) == 1
    assert chunk_size(0, 2, 64) == 0
    assert chunk_size(10, 0, 64) == 10  # no engine ready: one chunk waits for the first


def test_staleness_bound():
    assert not is_stale(3, 3, 0)
    assert is_stale(2, 3, 0)
    assert not is_stale(2, 3, 1) and is_stale(1, 3, 1)


def test_rate_meter_counts_tokens_in_the_window():
    meter = RateMeter(window_s=10.0)
    meter.add(100, now=0.0)
    meter.add(100, now=2.0)
    assert meter.rate(now=4.0) == 200 / 4.0
    assert meter.rate(now=30.0) == 0.0 and meter.total == 200
