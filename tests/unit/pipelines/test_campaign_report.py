"""report.html: self-contained (inline PNGs, nothing to fetch), one table row per trial, and
the Pareto front of score against compute seconds."""

import base64
import re
import struct
from html.parser import HTMLParser

from tunefleet.config import load_config
from tunefleet.pipelines.leaderboard import Row, compute_to_best
from tunefleet.pipelines.report import pareto_front, pareto_plot, report_html
from tunefleet.pipelines.sweep_plan import trial_resources

ROWS = [Row("t0", "sft", {"trainer.lr": 1e-3}, 0.50, 100, 10.0, "finished", curve=((50, 0.3), (100, 0.5))),
        Row("t1", "dpo", {"algorithm.beta": 0.1}, 0.70, 100, 30.0, "finished", curve=((50, 0.6), (100, 0.7))),
        Row("t2", "dpo", {"algorithm.beta": 0.5}, 0.40, 50, 12.0, "stopped", curve=((50, 0.4),)),
        Row("t3", "sft", {"trainer.lr": 1e-4}, None, None, 2.0, "failed", error="boom")]


def test_pareto_front_keeps_what_nothing_beats_on_both_axes():
    """By seconds: t0 (10 s, 0.5), t2 (12 s, 0.4), t1 (30 s, 0.7); t3 is unscored.
    max: t0, then only t1 beats 0.5. min: t0, then t2 beats 0.5; t1 (0.7) does not."""
    assert [r.trial_id for r in pareto_front(ROWS, "max")] == ["t0", "t1"]
    assert [r.trial_id for r in pareto_front(ROWS, "min")] == ["t0", "t2"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.trials, self.images, self.external = 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "trial" in (a.get("class") or "").split():
            self.trials += 1
        if tag == "img":
            self.images.append(a["src"])
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])
        if tag in ("script", "link"):
            self.external.append(tag)


def _png_size(src: str) -> tuple[int, int]:
    raw = base64.b64decode(src.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])


def test_report_inlines_every_plot_and_lists_every_trial(tmp_path):
    png = pareto_plot(ROWS, "eval/arith_l1/exact_match", "max", tmp_path / "pareto.png")
    page = report_html("campaign x", ROWS, "eval/arith_l1/exact_match", "max", [png, None])
    p = _Page()
    p.feed(page)
    assert p.trials == len(ROWS) and p.external == [] and len(p.images) == 1
    w, h = _png_size(p.images[0])
    assert w > 100 and h > 100
    order = re.findall(r"<td>(t\d)</td>", page)
    assert order == ["t1", "t0", "t2", "t3"]  # ranked by the objective, unscored last
    assert "eval/arith_l1/exact_match (max)" in page


def test_compute_to_best_counts_what_was_spent_until_the_best_trial_ended():
    """Sequential trials, 2 CPUs each: t0 0-10 s, t1 10-40 s (the best, 0.7), t2 40-52 s.
    To best: 2 x (10 + 30) = 80 CPU-s; in all 2 x (10 + 30 + 12) = 104. A concurrent trial
    t3 (1 CPU, 35-45 s) counts its 5 s before t1 ended: 85 to best, 114 in all."""
    rows = [Row("t0", "sft", {}, 0.5, 100, 10.0, "finished", cpus=2, start_s=0, end_s=10),
            Row("t1", "dpo", {}, 0.7, 100, 30.0, "finished", cpus=2, start_s=10, end_s=40),
            Row("t2", "dpo", {}, 0.4, 50, 12.0, "stopped", cpus=2, start_s=40, end_s=52)]
    assert compute_to_best(rows, "max") == {"cpu_seconds_to_best": 80.0, "gpu_seconds_to_best": 0.0,
                                            "cpu_seconds_total": 104.0, "gpu_seconds_total": 0.0}
    rows.append(Row("t3", "sft", {}, 0.1, 10, 10.0, "finished", cpus=1, start_s=35, end_s=45))
    cost = compute_to_best(rows, "max")
    assert cost["cpu_seconds_to_best"] == 85.0 and cost["cpu_seconds_total"] == 114.0
    assert compute_to_best([Row("x", "sft", {}, None, None, 3.0, "failed")], "max") is None
    # Another campaign's best as the target: t1 reaches 0.6 and ends first among those that do.
    assert compute_to_best(rows, "max", target=0.6)["cpu_seconds_to_best"] == 85.0
    assert compute_to_best(rows, "max", target=0.45)["cpu_seconds_to_best"] == 20.0  # t0 (0.5) ended at 10 s
    assert compute_to_best(rows, "min", target=0.1)["cpu_seconds_to_best"] == 85.0 + 2 * 5 + 5  # t3 ended at 45 s
    assert compute_to_best(rows, "max", target=0.9) is None


def test_trial_resources_count_workers_and_rollout_engines():
    sft = load_config(None, ["model.name=tiny-llama", "data.task=arith", "trainer.num_workers=2",
                             "trainer.cpus_per_worker=1.5"])
    assert trial_resources(sft) == (3.0, 0.0)
    grpo = load_config(None, ["model.name=tiny-llama", "data.task=arith", "algorithm.type=grpo",
                              "trainer.batch_size=8", "algorithm.group_size=4", "rollout.num_engines=2",
                              "rollout.resources_per_engine=1"])
    assert trial_resources(grpo) == (grpo.trainer.cpus_per_worker + 2.0, 0.0)


def test_report_renders_in_headless_chromium_and_a_broken_plot_is_caught(tmp_path):
    from report_browser import open_report

    png = pareto_plot(ROWS, "eval/arith_l1/exact_match", "max", tmp_path / "pareto.png")
    good = tmp_path / "report.html"
    good.write_text(report_html("campaign x", ROWS, "eval/arith_l1/exact_match", "max", [png]))
    page = open_report(good)
    assert page.errors == [] and page.rows == len(ROWS) and page.title
    assert len(page.images) == 1 and page.images[0][0] > 100 and page.images[0][1] > 100
    broken = tmp_path / "broken.html"  # what the checks are for: a plot that does not decode
    broken.write_text(good.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    page = open_report(broken)
    assert page.images == [(0, 0)] and page.rows == len(ROWS)
