"""The driver's side of in-training evaluation (train/eval_hook.py runs the points).

Before the fit: `build_plan` reads every suite file and `data.eval_path` (bad input fails
here, naming `file:line`, before any worker starts), checks `eval.objective` against the
suites' real names, and looks up the base model's cached scores of the `general` suites
(`$TUNEFLEET_HOME/evalcache`, keyed by model and data digest). `log_plan` records the eval
datasets (context `eval`) and the objective. After the fit: `finish_eval` logs each point's
files as artifacts (`eval/step_NNNNNN/`), draws `plots/forgetting.png` and
`plots/eval_curves.png`, logs `eval.objective`, fills the cache, and raises EvalFailed when
the final point had a failing suite (`eval.fail_final`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from tunefleet.config import ConfigError
from tunefleet.config.evaluation import HELDOUT, default_mode


class EvalFailed(RuntimeError):
    """The final eval point had a suite that raised."""


def _suites(cfg):
    """(all suites, names of the general ones): `eval.suites`, then `eval.general` (a spec in
    both is one suite, measured for forgetting too)."""
    from tunefleet.eval.suites import parse_suites

    e = cfg.eval
    main = parse_suites(list(e.suites), e.limit, cfg.data.seed)
    extra = parse_suites(list(e.general), e.limit, cfg.data.seed)
    names = {s.name for s in main}
    return tuple(main + [s for s in extra if s.name not in names]), tuple(s.name for s in extra)


def _heldout(cfg, tokenizer, max_prompt):
    from tunefleet.data.prepare import read_heldout
    from tunefleet.eval.heldout import Heldout

    if not cfg.data.eval_path:
        return None
    kind = cfg.algorithm.BATCH
    rows, digest = read_heldout(cfg.data, kind, tokenizer, max_prompt)
    if cfg.eval.limit:
        rows = rows[:cfg.eval.limit]
    return Heldout(kind, tuple(rows), str(Path(cfg.data.eval_path).resolve()), digest)


def model_fingerprint(model_dir: str) -> str:
    """What identifies a base model's weights: its config and its weight files' names and sizes."""
    d = Path(model_dir)
    parts = [(d / "config.json").read_text() if (d / "config.json").is_file() else str(d)]
    parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(d.glob("*.safetensors"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_key(cfg, model_dir: str, suite) -> str:
    blob = json.dumps({"model": model_fingerprint(model_dir), "dtype": cfg.model.dtype, "suite": suite.name,
                       "digest": suite.digest, "n": len(suite.examples), "max_new_tokens": cfg.eval.max_new_tokens},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cache_dir() -> Path:
    from tunefleet.paths import tunefleet_home

    return tunefleet_home() / "evalcache"


def _cached_base(cfg, model_dir: str, suites, general) -> dict:
    found = {}
    for s in suites:
        path = _cache_dir() / f"{cache_key(cfg, model_dir, s)}.json"
        if s.name in general and path.is_file():
            found[s.name] = json.loads(path.read_text())["metrics"]
    return found


def _objective(cfg, plan) -> tuple[str, str] | None:
    names = plan.names()
    obj = cfg.eval.objective
    if obj is None:
        return (f"eval/{names[0]}/{plan.headline(names[0])}", default_mode(plan.headline(names[0]))) if names else None
    suite = obj.metric.split("/")[1]
    if suite not in names:
        raise ConfigError("eval.objective.metric", f"bad value {obj.metric!r}; allowed: a metric of this run's "
                          f"suites ({', '.join(names) or 'none: set eval.suites or data.eval_path'})")
    return obj.metric, obj.direction


def build_plan(cfg, tokenizer, model_dir: str, max_prompt: int | None = None):
    """The run's EvalPlan, or None when it evaluates no suites. Raises DataError/SuiteError/ConfigError."""
    from tunefleet.eval.points import EvalPlan

    suites, general = _suites(cfg)
    heldout = _heldout(cfg, tokenizer, max_prompt)
    if not suites and heldout is None:
        if cfg.eval.objective is not None:
            raise ConfigError("eval.objective", "set, but the run evaluates no suites (eval.suites, "
                              "eval.general or data.eval_path)")
        return None
    e = cfg.eval
    plan = EvalPlan(suites, general, heldout, _cached_base(cfg, model_dir, suites, general), None,
                    e.max_new_tokens, e.batch_size, e.every_steps, e.before, e.fail_final)
    return dataclasses.replace(plan, objective=_objective(cfg, plan))


def log_plan(tracker, plan) -> None:
    """The eval datasets as MLflow inputs with context `eval`, and the objective as tags."""
    if plan is None:
        return
    from tunefleet.eval.runner import log_suite_data

    log_suite_data(tracker, list(plan.suites), prefix="eval_")
    if plan.heldout is not None:
        tracker.log_dataset(f"eval_{HELDOUT}", plan.heldout.digest, len(plan.heldout.rows), plan.heldout.path,
                            context="eval")
    if plan.objective:
        tracker.set_tags({"tunefleet.objective_metric": plan.objective[0], "tunefleet.objective_mode":
                          plan.objective[1], "tunefleet.eval.general": ",".join(plan.general)})


def read_points(eval_dir: Path) -> list[dict]:
    """Every point's metrics.json, by step."""
    return sorted((json.loads(p.read_text()) for p in eval_dir.glob("step_*/metrics.json")), key=lambda r: r["step"])


def _fill_cache(cfg, model_dir: str, plan, points: list[dict]) -> None:
    base = next((p.get("base") for p in points if p["step"] == 0 and p.get("base")), None) or {}
    for s in plan.suites:
        if s.name in plan.general and s.name in base and s.name not in plan.base:
            path = _cache_dir() / f"{cache_key(cfg, model_dir, s)}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"suite": s.name, "model_dir": model_dir, "metrics": base[s.name]}))


def finish_eval(tracker, cfg, plan, eval_dir: Path, model_dir: str) -> dict[str, float]:
    """After the fit: artifacts, plots, objective, cache; the final point's metrics (flat),
    plus `eval.objective` and, when step 0 was scored, `eval.objective_start`."""
    if plan is None:
        return {}
    points = read_points(eval_dir)
    for p in points:
        step_dir = f"step_{p['step']:06d}"
        tracker.log_artifact(str(eval_dir / step_dir), f"eval/{step_dir}")
    _fill_cache(cfg, model_dir, plan, points)
    _plots(tracker, plan, points)
    final = next((p for p in points if p.get("final")), None)
    if final is None:
        return {}
    out = dict(final["flat"])
    if plan.objective and plan.objective[0] in out:
        out["eval.objective"] = out[plan.objective[0]]
        tracker.log_metrics({"eval.objective": out["eval.objective"]}, step=final["step"])
        start = next((p for p in points if p["step"] == 0 and not p.get("final")), None)
        if start is not None and plan.objective[0] in start["flat"]:  # the starting model's score
            out["eval.objective_start"] = start["flat"][plan.objective[0]]
    if final["errors"] and plan.fail_final:
        names = ", ".join(final["errors"])
        tracker.log_text("\n\n".join(f"== {k}\n{v}" for k, v in final["errors"].items()), "eval/final_errors.txt")
        raise EvalFailed(f"final evaluation failed for suite(s) {names}; tracebacks in eval/final_errors.txt:\n"
                         + next(iter(final["errors"].values())))
    return out


def _plots(tracker, plan, points: list[dict]) -> None:
    from tunefleet.tracking.plots import eval_curves, forgetting_curves, log_plot

    if plan.general:
        log_plot(tracker, "forgetting.png", lambda out: forgetting_curves(plan, points, out))
    log_plot(tracker, "eval_curves.png", lambda out: eval_curves(plan, points, out))
