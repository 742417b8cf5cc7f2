"""Grafana dashboards: every JSON imports (the fields Grafana needs), is what dashboards/build.py
writes, queries only series the platform or Ray really export, and is documented."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tunefleet.telemetry import REGISTRY, exported_names, known_series

ROOT = Path(__file__).resolve().parents[2]
DASH = ROOT / "dashboards"
FILES = sorted(DASH.glob("*.json"))


def _build():
    spec = importlib.util.spec_from_file_location("tf_dashboard_build", DASH / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "le"}


def series_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels, keywords or strings)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)  # grouping labels
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", s)
    return {n for n in names if n not in _KEYWORDS}


def test_series_names_finds_metrics_only():
    expr = ('histogram_quantile(0.9, sum by (le, run) (rate(ray_x_bucket{run=~"$run", a="b c"}[$__rate_interval])))'
            ' / on (run) max without (WorkerId) (ray_y) + 2')
    assert series_names(expr) == {"ray_x_bucket", "ray_y"}


def test_there_are_three_dashboards():
    assert [f.name for f in FILES] == ["campaigns.json", "rollout.json", "training.json"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_has_what_grafana_needs(path):
    d = json.loads(path.read_text())
    assert d["schemaVersion"] == 39 and d["uid"].startswith("tunefleet-") and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["run"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    ids = [p["id"] for p in d["panels"]]
    assert d["panels"] and len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["type"] in ("timeseries", "stat") and p["title"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert set(p["gridPos"]) == {"h", "w", "x", "y"}
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"] and t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_every_query_uses_only_exported_series():
    known = known_series()
    for name, title, expr in _build().queries(DASH):
        names = series_names(expr)
        assert names, (name, title, expr)
        assert names <= known, f"{name} / {title}: {sorted(names - known)} is exported by nobody"


def test_an_unknown_metric_is_caught(tmp_path):
    d = json.loads((DASH / "training.json").read_text())
    d["panels"][0]["targets"][0]["expr"] = "max(ray_tunefleet_train_lossy)"
    (tmp_path / "x.json").write_text(json.dumps(d))
    bad = [e for _, _, e in _build().queries(tmp_path) if not series_names(e) <= known_series()]
    assert bad == ["max(ray_tunefleet_train_lossy)"]


def test_every_platform_metric_is_on_a_dashboard():
    used = set().union(*(series_names(e) for _, _, e in _build().queries(DASH)))
    for name in REGISTRY:
        assert used & set(exported_names(name)), f"{name} is on no dashboard"


def test_json_files_are_what_build_writes():
    build = _build()
    for key in build.DASHBOARDS:
        assert (DASH / f"{key}.json").read_text() == build.render(key), f"run python dashboards/build.py ({key})"


def test_readme_maps_every_panel_to_its_metrics():
    readme = (DASH / "README.md").read_text()
    for _, title, expr in _build().queries(DASH):
        assert title in readme, title
        for n in series_names(expr):
            assert f"`{n}`" in readme, (title, n)
