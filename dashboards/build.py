"""Writes the Grafana dashboards (training.json, rollout.json, campaigns.json) from the panel
lists below: `python dashboards/build.py`. The JSON files are what users import; the unit
test (tests/unit/test_dashboards.py) checks they are current and that every queried series is
one the platform or Ray really exports (tunefleet.telemetry.registry).

PromQL conventions: Ray exports application metrics as `ray_<name>` with its own labels
(WorkerId, NodeAddress, ...), so every query aggregates to the platform's labels. Grafana
variables: `$run` (multi-value regex), `$__rate_interval`.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39  # Grafana 10.3+ / 11 import it as is
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RUN = 'run=~"$run"'
BY = "run, kind, method"


def _g(metric: str, agg: str = "max", by: str = BY, sel: str = RUN) -> str:
    return f"{agg} by ({by}) ({metric}{{{sel}}})"


def _p(title: str, exprs: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
       desc: str = "") -> dict:
    """A panel: `exprs` is [(PromQL, legend)]."""
    return {"title": title, "type": kind, "unit": unit, "description": desc, "exprs": exprs}


TRAINING = [
    _p("Step", [(_g("ray_tunefleet_train_step"), "{{run}} {{method}}")]),
    _p("Loss", [(_g("ray_tunefleet_train_loss"), "{{run}} {{method}}")]),
    _p("Gradient norm (before clipping)", [(_g("ray_tunefleet_train_grad_norm"), "{{run}}")]),
    _p("Training tokens/s (all ranks)", [(_g("ray_tunefleet_train_tokens_per_second"), "{{run}}")], "short"),
    _p("World size (Ray Train workers)", [(_g("ray_tunefleet_train_world_size"), "{{run}}")]),
    _p("Restarts (worker groups started from a checkpoint)",
       [(_g("ray_tunefleet_train_restarts_total", "sum"), "{{run}}")], kind="stat"),
    _p("Eval objective", [(_g("ray_tunefleet_eval_objective", by=BY + ", metric"), "{{run}} {{metric}}")]),
    _p("Ray Train controller state", [(
        'max by (ray_train_run_name, ray_train_controller_state) '
        '(ray_train_controller_state{ray_train_run_name=~"$run"})',
        "{{ray_train_run_name}} {{ray_train_controller_state}}")]),
    _p("Ray Train: worker-group start, report-blocked and checkpoint time", [
        ('max by (ray_train_run_name) (ray_train_worker_group_start_total_time_s{ray_train_run_name=~"$run"})',
         "{{ray_train_run_name}} group start"),
        ('sum by (ray_train_run_name) (ray_train_report_total_blocked_time_s{ray_train_run_name=~"$run"})',
         "{{ray_train_run_name}} report blocked"),
        ('sum by (ray_train_run_name) (ray_train_checkpoint_sync_total_time_s{ray_train_run_name=~"$run"})',
         "{{ray_train_run_name}} checkpoint sync")], "s"),
    _p("Node CPU utilisation", [("max by (NodeAddress) (ray_node_cpu_utilization)", "{{NodeAddress}}")], "percent"),
    _p("Node memory used", [("max by (NodeAddress) (ray_node_mem_used)", "{{NodeAddress}}")], "bytes"),
    _p("Object store memory", [("sum by (NodeAddress, Location) (ray_object_store_memory)",
                                "{{NodeAddress}} {{Location}}")], "bytes"),
    _p("GPU utilisation", [("max by (NodeAddress, GpuIndex) (ray_node_gpus_utilization)",
                            "{{NodeAddress}} GPU {{GpuIndex}}")], "percent", desc="GPU nodes only"),
    _p("GPU memory used", [("max by (NodeAddress, GpuIndex) (ray_node_gram_used)",
                            "{{NodeAddress}} GPU {{GpuIndex}}")], "decmbytes", desc="GPU nodes only"),
]

_PBY = "run, pool"
ROLLOUT = [
    _p("Rollout tokens/s (pool)", [(_g("ray_tunefleet_rollout_tokens_per_second", by=_PBY), "{{pool}}")]),
    _p("Generated tokens/s (rate of the counter)", [(
        f"sum by ({_PBY}) (rate(ray_tunefleet_rollout_generated_tokens_total{{{RUN}}}[$__rate_interval]))",
        "{{pool}}")]),
    _p("Queue depth (prompts waiting)", [(_g("ray_tunefleet_rollout_queue_depth", by=_PBY), "{{pool}}")]),
    _p("Weight sync seconds (p50, p90)", [
        (f"histogram_quantile(0.5, sum by (le, {_PBY}) (rate(ray_tunefleet_rollout_sync_seconds_bucket{{{RUN}}}"
         "[$__rate_interval])))", "{{pool}} p50"),
        (f"histogram_quantile(0.9, sum by (le, {_PBY}) (rate(ray_tunefleet_rollout_sync_seconds_bucket{{{RUN}}}"
         "[$__rate_interval])))", "{{pool}} p90")], "s"),
    _p("Weight syncs (total, mean seconds)", [
        (f"sum by ({_PBY}) (ray_tunefleet_rollout_sync_seconds_count{{{RUN}}})", "{{pool}} syncs"),
        (f"sum by ({_PBY}) (ray_tunefleet_rollout_sync_seconds_sum{{{RUN}}}) / "
         f"sum by ({_PBY}) (ray_tunefleet_rollout_sync_seconds_count{{{RUN}}})", "{{pool}} mean s")]),
    _p("Staleness (policy versions behind)", [(_g("ray_tunefleet_rollout_staleness_mean"), "{{run}} mean"),
                                              (_g("ray_tunefleet_rollout_staleness_max"), "{{run}} max")]),
    _p("Reward mean", [(_g("ray_tunefleet_reward_mean"), "{{run}} {{method}}")]),
    _p("Policy version (pool)", [(_g("ray_tunefleet_rollout_policy_version", by=_PBY), "{{pool}}")]),
    _p("Engines ready", [(_g("ray_tunefleet_rollout_engines_ready", by=_PBY), "{{pool}}")], kind="stat"),
    _p("Engine restarts, retried requests, regenerated stale samples", [
        (_g("ray_tunefleet_rollout_engine_restarts_total", "sum", _PBY), "{{pool}} engine restarts"),
        (_g("ray_tunefleet_rollout_requests_retried_total", "sum", _PBY), "{{pool}} requests retried"),
        (_g("ray_tunefleet_rollout_stale_regenerated_total", "sum", _PBY), "{{pool}} stale regenerated")]),
    _p("Node CPU utilisation", [("max by (NodeAddress) (ray_node_cpu_utilization)", "{{NodeAddress}}")], "percent"),
    _p("GPU memory used", [("max by (NodeAddress, GpuIndex) (ray_node_gram_used)",
                            "{{NodeAddress}} GPU {{GpuIndex}}")], "decmbytes", desc="GPU nodes only"),
]

_CSEL = 'run=~"$run", kind="sweep"'
CAMPAIGNS = [
    _p("Trials by state", [(_g("ray_tunefleet_campaign_trials", by="run, state", sel=_CSEL), "{{run}} {{state}}")]),
    _p("Trials running", [(_g("ray_tunefleet_campaign_trials", by="run", sel=_CSEL + ', state="running"'),
                           "{{run}}")], kind="stat"),
    _p("Trials stopped early", [(_g("ray_tunefleet_campaign_trials", by="run", sel=_CSEL + ', state="stopped"'),
                                 "{{run}}")], kind="stat"),
    _p("Trials done", [(_g("ray_tunefleet_campaign_trials", by="run", sel=_CSEL + ', state="done"'), "{{run}}")],
       kind="stat"),
    _p("Trial objectives (every trial's newest eval point)", [(
        'max by (run, method, metric) (ray_tunefleet_eval_objective{kind="sweep"})', "{{run}} {{method}}")]),
    _p("Trial training tokens/s", [(
        'max by (run, method) (ray_tunefleet_train_tokens_per_second{kind="sweep"})', "{{run}} {{method}}")]),
    _p("Cluster CPU utilisation", [("avg(ray_node_cpu_utilization)", "mean over nodes")], "percent"),
]

DASHBOARDS = {
    "training": ("tunefleet: training", TRAINING, "ray_tunefleet_train_step"),
    "rollout": ("tunefleet: rollout and RL", ROLLOUT, "ray_tunefleet_rollout_queue_depth"),
    "campaigns": ("tunefleet: campaigns", CAMPAIGNS, "ray_tunefleet_campaign_trials"),
}


def _panel(i: int, p: dict) -> dict:
    width = 8 if p["type"] == "stat" else 12
    targets = [{"datasource": DS, "expr": e, "legendFormat": leg, "refId": chr(ord("A") + j)}
               for j, (e, leg) in enumerate(p["exprs"])]
    return {"id": i + 1, "type": p["type"], "title": p["title"], "description": p["description"], "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []}, "options": {}, "targets": targets}


def _variables(run_series: str) -> list[dict]:
    ds = {"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "query": "prometheus",
          "current": {}, "hide": 0, "refresh": 1, "options": [], "regex": ""}
    run = {"name": "run", "label": "run", "type": "query", "datasource": DS, "refresh": 2, "multi": True,
           "includeAll": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "options": [],
           "query": {"query": f"label_values({run_series}, run)", "refId": "run"},
           "definition": f"label_values({run_series}, run)", "sort": 1, "hide": 0, "regex": ""}
    return [ds, run]


def dashboard(key: str) -> dict:
    """The Grafana JSON model of dashboard `key` (a DASHBOARDS key)."""
    title, panels, run_series = DASHBOARDS[key]
    return {
        "uid": f"tunefleet-{key}", "title": title, "tags": ["tunefleet", "ray"], "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "annotations": {"list": []},
        "templating": {"list": _variables(run_series)},
        "panels": [_panel(i, p) for i, p in enumerate(panels)],
    }


def render(key: str) -> str:
    return json.dumps(dashboard(key), indent=2) + "\n"


def queries(folder: Path = HERE) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) for every target of every dashboard JSON in `folder`."""
    out = []
    for path in sorted(folder.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out.extend((path.name, panel["title"], t["expr"]) for t in panel["targets"])
    return out


if __name__ == "__main__":
    for name in DASHBOARDS:
        (HERE / f"{name}.json").write_text(render(name))
        print(f"wrote dashboards/{name}.json")
