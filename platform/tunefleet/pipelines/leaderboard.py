"""A campaign's leaderboard: one row per trial, as CSV, Markdown, console text and plots.

Rows are built from the trials' MLflow child runs (pipelines/sweep_job.py), so a failed or
early-stopped trial is on the board too. Ranked by the objective (best first, by `mode`);
trials without a score (failed before their first eval point) go last. No torch, no Ray.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from tunefleet.pipelines.sweep_plan import short_value

COLUMNS = ("rank", "trial", "method", "hyperparameters", "objective", "train_tokens", "seconds", "cpu_s", "gpu_s",
           "status")


@dataclass(frozen=True)
class Row:
    """`status`: finished | stopped (ASHA, or the campaign's wall time) | failed | not run.
    `curve`: [(train_tokens, objective)] at each eval point, for the plots."""

    trial_id: str
    method: str
    params: dict
    objective: float | None
    train_tokens: float | None
    seconds: float | None
    status: str
    run_id: str | None = None
    curve: tuple = field(default_factory=tuple)
    error: str = ""  # a failed trial's error (its tail)
    cpus: float = 0.0  # what the trial held: its workers (+ rollout engines), sweep_plan.trial_resources
    gpus: float = 0.0
    start_s: float | None = None  # wall-clock start and end (epoch seconds), for compute-to-best
    end_s: float | None = None

    @property
    def cpu_seconds(self) -> float | None:
        return None if self.seconds is None else self.cpus * self.seconds

    @property
    def gpu_seconds(self) -> float | None:
        return None if self.seconds is None else self.gpus * self.seconds

    def hyperparameters(self) -> str:
        return " ".join(f"{k}={short_value(v)}" for k, v in sorted(self.params.items()))


def _key(mode: str):
    def key(row: Row):
        if row.objective is None or math.isnan(row.objective):
            return (1, 0.0, row.trial_id)
        return (0, -row.objective if mode == "max" else row.objective, row.trial_id)

    return key


def ranked(rows: list[Row], mode: str) -> list[Row]:
    """Best first; unscored rows last, in trial order."""
    return sorted(rows, key=_key(mode))


def best_per_method(rows: list[Row], mode: str) -> dict[str, Row]:
    """method -> its best scored row (methods with no scored trial are left out)."""
    out: dict[str, Row] = {}
    for row in ranked(rows, mode):
        if row.objective is not None and row.method not in out:
            out[row.method] = row
    return out


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _cells(rank: int, row: Row, exact: bool = False) -> list[str]:
    """Table cells; `exact`: the objective at full precision (CSV is for machines)."""
    return [str(rank), row.trial_id, row.method, row.hyperparameters(), _num(row.objective, "" if exact else ".4g"),
            _num(row.train_tokens, ".0f"), _num(row.seconds, ".1f"), _num(row.cpu_seconds, ".0f"),
            _num(row.gpu_seconds, ".0f"), row.status]


def compute_to_best(rows: list[Row], mode: str, target: float | None = None) -> dict[str, float] | None:
    """CPU- and GPU-seconds the whole campaign had spent when its best score was first
    reached (when the best trial ended; concurrent trials count up to that moment), and in
    all. `target`: a score to reach instead of the campaign's own best (another campaign's,
    bench/campaign.py): the first trial to end at least that good. None without such a
    trial or without start/end times."""
    scored = [r for r in ranked(rows, mode) if r.objective is not None]
    if target is not None:
        good = [r for r in scored if r.end_s is not None and (r.objective >= target if mode == "max"
                                                              else r.objective <= target)]
        scored = sorted(good, key=lambda r: r.end_s)
    if not scored or scored[0].end_s is None:
        return None
    until = scored[0].end_s
    timed = [r for r in rows if r.start_s is not None and r.end_s is not None]
    spent = [(r, max(0.0, min(r.end_s, until) - r.start_s)) for r in timed]
    return {"cpu_seconds_to_best": sum(r.cpus * t for r, t in spent),
            "gpu_seconds_to_best": sum(r.gpus * t for r, t in spent),
            "cpu_seconds_total": sum(r.cpu_seconds or 0.0 for r in rows),
            "gpu_seconds_total": sum(r.gpu_seconds or 0.0 for r in rows)}


def to_csv(rows: list[Row], mode: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*COLUMNS, "run_id"])
    for i, row in enumerate(ranked(rows, mode), 1):
        w.writerow([*_cells(i, row, exact=True), row.run_id or ""])
    return buf.getvalue()


def to_markdown(rows: list[Row], metric: str, mode: str) -> str:
    """A Markdown table with the objective's name (and direction) in its header."""
    head = [c if c != "objective" else f"{metric} ({mode})" for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(ranked(rows, mode), 1):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(i, row)) + " |")
    return "\n".join(lines) + "\n"


def to_text(rows: list[Row], metric: str, mode: str) -> str:
    """The console leaderboard: aligned columns."""
    head = [c if c != "objective" else f"{metric.rsplit('/', 2)[-2]}:{metric.rsplit('/', 1)[-1]}" for c in COLUMNS]
    table = [head] + [_cells(i, r) for i, r in enumerate(ranked(rows, mode), 1)]
    widths = [max(len(r[j]) for r in table) for j in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def objective_vs_tokens(rows: list[Row], metric: str, mode: str, out: Path) -> Path | None:
    """Each trial's objective at its eval points against training tokens, coloured by method;
    a stopped trial's curve ends with an x."""
    from tunefleet.tracking.plots import _figure, _save, label_axes

    drawn = [r for r in rows if r.curve]
    if not drawn:
        return None
    plt, fig, (ax,) = _figure(1)
    methods = sorted({r.method for r in drawn})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for r in drawn:
        xs, ys = zip(*r.curve)
        ax.plot(xs, ys, marker="o", ms=3, color=colours[r.method], alpha=0.8)
        if r.status == "stopped":
            ax.plot(xs[-1], ys[-1], marker="x", ms=9, color=colours[r.method])
    for m in methods:
        ax.plot([], [], color=colours[m], label=m)
    label_axes(ax, "training target tokens", metric, mode, "campaign: objective vs tokens (x: stopped early)")
    return _save(plt, fig, out)


def best_per_method_plot(rows: list[Row], metric: str, mode: str, out: Path) -> Path | None:
    """A bar per method: its best trial's objective."""
    from tunefleet.tracking.plots import _figure, _save

    best = best_per_method(rows, mode)
    if not best:
        return None
    plt, fig, (ax,) = _figure(1)
    names = sorted(best)
    ax.bar(names, [best[m].objective for m in names], color=[plt.get_cmap("tab10")(i % 10) for i in range(len(names))])
    for i, m in enumerate(names):
        ax.annotate(f"{best[m].objective:.4g}\n{best[m].trial_id}", (i, best[m].objective), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xlabel("method")
    ax.set_ylabel(f"best {metric} ({mode})")
    ax.set_title("campaign: best score per method", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, out)
