"""Plots of a run's curves, logged as artifacts next to the metrics (driver side).

An RL run gets `plots/reward_curve.png`: reward mean over every generated sample (with a
+/- std band), the task verifier's accuracy (when a `task` reward is used), and the
held-out accuracy before/after as dashed lines.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def _history(tracker, key: str) -> tuple[list[int], list[float]]:
    points = sorted((m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, key))
    return [s for s, _ in points], [v for _, v in points]


def reward_curve(tracker, out: Path, eval_metrics: dict[str, float] | None = None) -> Path | None:
    """Draw the reward curve of `tracker`'s run into `out` (PNG); None if nothing logged."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers or CI
    import matplotlib.pyplot as plt

    steps, mean = _history(tracker, "reward_mean")
    if not steps:
        return None
    _, std = _history(tracker, "reward_std")
    acc_steps, acc = _history(tracker, "accuracy")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, mean, label="reward (mean over samples)")
    if len(std) == len(mean):
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.15)
    if acc:
        ax.plot(acc_steps, acc, label="sample accuracy (task verifier)", alpha=0.7)
    for key, style in (("eval/accuracy_before", "grey"), ("eval/accuracy_after", "green")):
        if eval_metrics and key in eval_metrics:
            ax.axhline(eval_metrics[key], ls="--", color=style, label=f"{key} = {eval_metrics[key]:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("reward / accuracy")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_reward_curve(tracker, eval_metrics: dict[str, float] | None = None) -> None:
    """Plot and log `plots/reward_curve.png`; a plotting or tracking problem only warns."""
    import warnings

    try:
        folder = Path(tempfile.gettempdir()) / f"tunefleet-plots-{tracker.run_id}"
        folder.mkdir(parents=True, exist_ok=True)
        path = reward_curve(tracker, folder / "reward_curve.png", eval_metrics)
        if path is not None:
            tracker.log_artifact(str(path), "plots")
    except Exception as err:  # noqa: BLE001 - a plot must never fail a finished run
        warnings.warn(f"could not plot the reward curve: {err}", stacklevel=2)
