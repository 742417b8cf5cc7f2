"""Plots of a run's curves, logged as artifacts next to the metrics (driver side).

An RL run gets `plots/reward_curve.png`: reward mean over every generated sample (with a
+/- std band), the task verifier's accuracy (when a `task` reward is used), and the
held-out accuracy before/after as dashed lines.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunefleet.config.evaluation import default_mode


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


def log_plot(tracker, name: str, draw) -> Path | None:
    """Draw `plots/<name>` with `draw(path) -> path | None` and log it; returns the local PNG.
    A plotting or tracking problem only warns (a plot must never fail a finished run)."""
    import warnings

    try:
        folder = Path(tempfile.gettempdir()) / f"tunefleet-plots-{tracker.run_id}"
        folder.mkdir(parents=True, exist_ok=True)
        path = draw(folder / name)
        if path is not None:
            tracker.log_artifact(str(path), "plots")
        return path
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"could not draw plots/{name}: {err}", stacklevel=2)
        return None


def log_reward_curve(tracker, eval_metrics: dict[str, float] | None = None) -> None:
    """Plot and log `plots/reward_curve.png`."""
    log_plot(tracker, "reward_curve.png", lambda out: reward_curve(tracker, out, eval_metrics))


def _series(points: list[dict], suite: str, metric: str) -> tuple[list[int], list[float]]:
    pts = [(p["step"], p["metrics"][suite][metric]) for p in points if metric in p["metrics"].get(suite, {})]
    return [s for s, _ in pts], [v for _, v in pts]


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.8), squeeze=False)
    return plt, fig, list(axes[0])


def label_axes(ax, xlabel: str, metric: str, mode: str | None, title: str) -> None:
    """The one axis style of every curve plot: labels (the metric's direction when `mode`
    is given), a small title, legend and grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric if mode is None else f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def forgetting_curves(plan, points: list[dict], out: Path) -> Path | None:
    """One panel per general suite: its headline metric against step, the base model's score
    dashed. `points`: the run's eval points (pipelines/eval_steps.py read_points)."""
    suites = [s for s in plan.general if _series(points, s, plan.headline(s))[0]]
    if not suites:
        return None
    plt, fig, axes = _figure(len(suites))
    for ax, suite in zip(axes, suites):
        metric = plan.headline(suite)
        steps, values = _series(points, suite, metric)
        ax.plot(steps, values, marker="o", label="fine-tuned")
        if steps and steps[0] == 0:
            ax.axhline(values[0], ls="--", color="grey", label=f"base = {values[0]:.4g}")
        label_axes(ax, "training step", metric, default_mode(metric), f"forgetting check: {suite}")
    return _save(plt, fig, out)


def eval_curves(plan, points: list[dict], out: Path) -> Path | None:
    """Every suite's headline metric against step, one panel per metric name."""
    by_metric: dict[str, list[str]] = {}
    for suite in plan.names():
        if _series(points, suite, plan.headline(suite))[0]:
            by_metric.setdefault(plan.headline(suite), []).append(suite)
    if not by_metric:
        return None
    plt, fig, axes = _figure(len(by_metric))
    for ax, (metric, suites) in zip(axes, by_metric.items()):
        for suite in suites:
            ax.plot(*_series(points, suite, metric), marker="o", label=suite)
        label_axes(ax, "training step", metric, None, f"eval: {metric}")
    return _save(plt, fig, out)
