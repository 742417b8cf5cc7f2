"""RL runs get a reward-curve plot next to their metrics."""

import tempfile
from pathlib import Path

from tunefleet.tracking import Tracker
from tunefleet.tracking.plots import log_reward_curve


def test_reward_curve_is_logged_as_a_png(home):
    tracker = Tracker.start(f"sqlite:///{home}/mlflow.db", "plots", "curve")
    for step in range(1, 6):
        tracker.log_metrics({"reward_mean": 0.1 * step, "reward_std": 0.05, "accuracy": 0.1 * step}, step=step)
    log_reward_curve(tracker, {"eval/accuracy_before": 0.2, "eval/accuracy_after": 0.6})
    tracker.flush()
    assert "plots/reward_curve.png" in tracker.list_artifacts()
    png = Path(tempfile.gettempdir()) / f"tunefleet-plots-{tracker.run_id}" / "reward_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tracker.finish()


def test_no_rewards_logged_means_no_plot(home):
    tracker = Tracker.start(f"sqlite:///{home}/mlflow.db", "plots", "empty")
    log_reward_curve(tracker)
    assert not any(a.startswith("plots/") for a in tracker.list_artifacts())
    tracker.finish()
