"""A campaign's `report.html`: the leaderboard and every plot in one self-contained page.

The images are inlined as base64 PNGs and there is no script, stylesheet or font to fetch,
so the page opens offline (from MLflow's artifact view, a laptop, a CI artifact). Also the
Pareto plot of score against compute seconds. No torch, no Ray.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from tunefleet.pipelines.leaderboard import COLUMNS, Row, _cells, ranked

_STYLE = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f0f0f0}"
          "img{max-width:100%;margin:1em 0;border:1px solid #eee}.failed{color:#a00}.stopped{color:#777}")


def pareto_front(rows: list[Row], mode: str) -> list[Row]:
    """Scored rows no other row beats on both score and seconds, by seconds ascending."""
    pts = sorted((r for r in rows if r.objective is not None and r.seconds is not None),
                 key=lambda r: (r.seconds, -r.objective if mode == "max" else r.objective))
    front, best = [], None
    for r in pts:
        if best is None or (r.objective > best if mode == "max" else r.objective < best):
            front.append(r)
            best = r.objective
    return front


def pareto_plot(rows: list[Row], metric: str, mode: str, out: Path) -> Path | None:
    """Score against compute seconds per trial, coloured by method, the Pareto front joined."""
    from tunefleet.tracking.plots import _figure, _save, label_axes

    pts = [r for r in rows if r.objective is not None and r.seconds is not None]
    if not pts:
        return None
    plt, fig, (ax,) = _figure(1)
    methods = sorted({r.method for r in pts})
    for i, m in enumerate(methods):
        mine = [r for r in pts if r.method == m]
        ax.scatter([r.seconds for r in mine], [r.objective for r in mine], color=plt.get_cmap("tab10")(i % 10),
                   label=m, s=30)
    front = pareto_front(rows, mode)
    ax.plot([r.seconds for r in front], [r.objective for r in front], "k--", lw=1, label="Pareto front")
    label_axes(ax, "compute seconds per trial (wall time)", metric, mode, "campaign: score vs compute")
    return _save(plt, fig, out)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def report_html(title: str, rows: list[Row], metric: str, mode: str, images: list[Path]) -> str:
    """The page: a heading, the ranked leaderboard (one <tr class="trial"> per trial), the plots."""
    head = "".join(f"<th>{html.escape(c if c != 'objective' else f'{metric} ({mode})')}</th>" for c in COLUMNS)
    body = "".join(
        f'<tr class="trial {html.escape(r.status.replace(" ", "-"))}">'
        + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(i, r)) + "</tr>"
        for i, r in enumerate(ranked(rows, mode), 1))
    plots = "".join(_img(p) for p in images if p is not None and Path(p).is_file())
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Leaderboard</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<h2>Plots</h2>{plots}</body></html>\n")
