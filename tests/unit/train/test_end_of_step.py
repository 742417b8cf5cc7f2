"""When the loop checkpoints: on schedule, once per preemption notice, and on a stop request."""

from types import SimpleNamespace

import pytest
import ray.train

from tunefleet.config import load_config
from tunefleet.train import loop


def _cfg(every: int, steps: int = 10):
    return load_config(None, ["model.name=tiny-llama", f"trainer.max_steps={steps}", f"checkpoint.every_steps={every}",
                              "trainer.batch_size=4", "trainer.micro_batch_size=4"])


@pytest.fixture
def harness(monkeypatch):
    """Records checkpoints; `notices[step]` is what get_preemption_info returns after it;
    `stops` the steps after which a stop is requested."""
    h = SimpleNamespace(saved=[], notices={}, stops=set(), step=0)
    monkeypatch.setattr(loop, "_checkpoint", lambda ctx, step, rank, metrics, model_dir, extra:
                        h.saved.append((step, model_dir is not None, metrics.get("preempted", False))))
    monkeypatch.setattr(ray.train, "get_preemption_info", lambda: h.notices.get(h.step), raising=False)
    monkeypatch.setattr(loop, "stop_requested", lambda control, rank, world: "SIGTERM" if h.step in h.stops else None)
    h.source = SimpleNamespace(state=lambda: {})

    def run(cfg, steps):
        notice = loop._PreemptNotice()
        for done in range(1, steps + 1):
            h.step = done
            if loop._end_of_step(None, cfg, done, 0, 1, {}, h.source, {"model_dir": "m"}, None, notice):
                return done
        return None

    h.run = run
    return h


def _info(*nodes):
    return SimpleNamespace(preempted_node_ids=sorted(nodes), preempted_ranks=[1], deadline_ms=None)


def test_periodic_and_final_checkpoints(harness):
    assert harness.run(_cfg(every=4), 10) is None
    assert harness.saved == [(4, False, False), (8, False, False), (10, True, False)]


def test_one_checkpoint_per_preemption_notice(harness):
    a, ab = _info("node-a"), _info("node-a", "node-b")
    harness.notices = {3: a, 5: a, 6: a, 7: ab, 8: ab}  # the same notice repeats until the node goes
    harness.run(_cfg(every=0), 10)
    assert harness.saved == [(3, False, True), (7, False, True), (10, True, False)]


def test_notice_on_a_scheduled_checkpoint_writes_one(harness):
    harness.notices = {4: _info("node-a")}
    harness.run(_cfg(every=4, steps=6), 6)
    assert harness.saved == [(4, False, False), (6, True, False)]


def test_stop_request_checkpoints_and_ends_the_loop(harness):
    harness.stops = {5, 8}
    assert harness.run(_cfg(every=4), 10) == 5
    assert harness.saved == [(4, False, False), (5, False, False)]


def test_stop_on_a_scheduled_step_writes_one_checkpoint(harness):
    harness.stops = {4}
    assert harness.run(_cfg(every=4), 10) == 4
    assert harness.saved == [(4, False, False)]
