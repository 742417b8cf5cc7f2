"""The self-play iteration driver: per iteration generate -> build -> train -> evaluate ->
promote (or stop), over the existing job steps; each train step is an ordinary tunefleet run.

A small explicit state machine. After every step the driver writes the step's record to
`$TUNEFLEET_HOME/selfplay/<run name>/state.json` (atomically), so a rerun with the same
`run.name` skips every finished step: a finished iteration is never regenerated or
retrained, and an interrupted train step resumes from its checkpoint into its MLflow run.

MLflow: the loop is one parent run (tag `tunefleet.kind=selfplay`); each iteration's train
run is its child (`mlflow.parentRunId`, `tunefleet.iteration`). Every built dataset is a
dataset input of both, tagged with its lineage: the model that generated it
(`tunefleet.generated_by`: `base:<alias>` or `models:/NAME/V`), the iteration, the
generator's policy version, the sampling and the judge; the parent also records which run
trained on it (`dataset.train_iter<t>.trained_run_id`). Promoted models are registered
versions whose `tunefleet.parent` is model_t.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from tunefleet.config import Config, dump_yaml, to_dict
from tunefleet.pipelines.sweep_state import read_json, write_json
from tunefleet.pipelines.train_job import JobResult, _start_tracker, run_name

STEPS = ("generate", "build", "train", "evaluate", "promote")


class StoppedMidIteration(RuntimeError):
    """The iteration's training was stopped on request; rerunning resumes it."""


def selfplay_dir(name: str) -> Path:
    from tunefleet.paths import tunefleet_home

    return tunefleet_home() / "selfplay" / name


@dataclasses.dataclass
class Loop:
    """What every step sees: the config, the loop's name and dir, its parent run, its state."""

    cfg: Config
    name: str
    root: Path
    tracker: object
    state: dict

    def save(self) -> None:
        write_json(self.root / "state.json", self.state)

    def it_dir(self, t: int) -> Path:
        path = self.root / f"iter_{t:03d}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _lineage(loop: Loop, it: dict) -> dict[str, str]:
    gen = it["generate"]
    return {"tunefleet.generated_by": it["model_ref"], "tunefleet.iteration": str(it["index"]),
            "tunefleet.policy_version": ",".join(map(str, gen["versions"])), "tunefleet.sampling": gen["sampling"],
            "tunefleet.judge": json.dumps(to_dict(loop.cfg.selfplay.judge), sort_keys=True),
            "tunefleet.selfplay": loop.name}


def _generate(loop: Loop, it: dict, pool, gold) -> dict:
    from tunefleet.pipelines.selfplay_data import generate

    out = loop.it_dir(it["index"]) / "generated.parquet"
    return generate(loop.cfg, pool, gold, out, it["index"], it["model_ref"], loop.tracker)


def _build(loop: Loop, it: dict, pool, gold) -> dict:
    from tunefleet.pipelines.selfplay_data import build

    t = it["index"]
    record = build(loop.cfg, pool, gold, it["generate"], loop.it_dir(t) / "train.parquet", t)
    name = f"train_iter{t}"
    loop.tracker.log_dataset(name, record["digest"], record["rows"], record["path"], tags=_lineage(loop, it))
    loop.tracker.set_tags({f"dataset.{name}.{k.split('.', 1)[1]}": v for k, v in _lineage(loop, it).items()})
    loop.tracker.log_metrics({f"selfplay/{k}": float(v) for k, v in record["counts"].items()}, step=t)
    return record


def _train(loop: Loop, it: dict, pool, gold) -> dict:
    from tunefleet.config.selfplay_methods import iteration_config
    from tunefleet.pipelines.train_job import run_train_job
    from tunefleet.pipelines.trial import Trial

    pool.close()  # the engines' CPUs go to the trainer
    t = it["index"]
    cfg = iteration_config(loop.cfg, it["model_dir"], it["build"]["path"], f"{loop.name}-iter{t}")
    lineage = _lineage(loop, it)
    trial = Trial(parent_run_id=loop.tracker.run_id, tags={"tunefleet.kind": "selfplay-iteration", **lineage},
                  report_evals=False, dataset_tags={"train": lineage})
    result = run_train_job(cfg, trial=trial)
    if result.metrics.get("stopped"):  # SIGTERM (`ray job stop`): checkpointed, not finished
        raise StoppedMidIteration(f"iteration {t} stopped at step {int(result.metrics.get('step', 0))}")
    loop.tracker.set_tags({f"dataset.train_iter{t}.trained_run_id": result.run_id or ""})
    return {"run_id": result.run_id, "checkpoint": result.checkpoint, "objective": list(result.objective or ()),
            "start": result.metrics.get("eval.objective_start"), "after": result.metrics.get("eval.objective"),
            "bad_rows": result.metrics.get("data/bad_rows", 0.0)}


def _evaluate(loop: Loop, it: dict, pool, gold) -> dict:
    """Compare model_{t+1}'s objective with model_t's (both scored by the iteration's run)."""
    train = it["train"]
    if train["after"] is None or train["start"] is None:
        raise RuntimeError(f"iteration {it['index']}: the train run {train['run_id']} recorded no objective "
                           "at step 0 and at the end; check eval.suites")
    metric, mode = train["objective"]
    sign = 1.0 if mode == "max" else -1.0
    regressed = sign * (train["after"] - train["start"]) < 0
    t = it["index"]
    if t == 0:
        loop.tracker.log_metrics({"selfplay/objective": train["start"]}, step=0)
    loop.tracker.log_metrics({"selfplay/objective": train["after"], "selfplay/regressed": float(regressed)},
                             step=t + 1)
    print(f"[selfplay] iteration {t}: {metric} {train['start']:.4f} -> {train['after']:.4f}"
          f"{' (worse)' if regressed else ''}", flush=True)
    return {"metric": metric, "mode": mode, "before": train["start"], "after": train["after"], "regressed": regressed}


def _promote(loop: Loop, it: dict, pool, gold) -> dict:
    """model_{t+1} as a plain HF dir (a LoRA adapter is merged into model_t), registered with
    model_t as its parent; or the loop's stop when it regressed (selfplay.stop_on_regression)."""
    from tunefleet import storage
    from tunefleet.models.export import export_hf_dir

    ev = it["evaluate"]
    if ev["regressed"] and loop.cfg.selfplay.stop_on_regression:
        return {"stopped": f"{ev['metric']} got worse ({ev['before']:.4f} -> {ev['after']:.4f}); "
                           f"keeping {it['model_ref']}"}
    dest = loop.it_dir(it["index"]) / "model"
    tmp = dest.with_name("model.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a promote killed half-way starts over
    lineage = {"selfplay": loop.name, "iteration": it["index"], "parent": it["model_ref"],
               "run_id": it["train"]["run_id"]}
    with storage.local_subdir(it["train"]["checkpoint"], "export") as export:
        export_hf_dir(export, it["model_dir"], tmp, lineage)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return {"model_dir": str(dest), "model_ref": _register(loop, it, dest)}


def _register(loop: Loop, it: dict, model_dir: Path) -> str:
    """`models:/NAME/V` of the new version (NAME: selfplay.register or the run's name), or the
    directory when tracking is off."""
    run_id = it["train"]["run_id"]
    if not (loop.cfg.tracking.enabled and run_id and loop.tracker.run_id):
        return str(model_dir)
    from tunefleet.tracking import registry

    ev = it["evaluate"]
    client = loop.tracker.client
    source = registry.log_hf_model(client, run_id, model_dir, "selfplay_model")
    tags = {registry.TAG_RUN: run_id, registry.TAG_STEP: str(loop.cfg.trainer.max_steps),
            registry.TAG_DATA: json.dumps({"train": it["build"]["digest"]}), registry.TAG_PARENT: it["model_ref"],
            registry.TAG_METRIC: ev["metric"], registry.TAG_OBJECTIVE: repr(float(ev["after"])),
            "tunefleet.iteration": str(it["index"]), "tunefleet.selfplay": loop.name}
    mv = registry.register_version(client, loop.cfg.selfplay.register or loop.name, source, run_id, tags)
    return f"models:/{mv.name}/{mv.version}"


STEP_FNS = {"generate": _generate, "build": _build, "train": _train, "evaluate": _evaluate, "promote": _promote}


def _iteration(loop: Loop, t: int) -> dict:
    """Iteration t's record; a new one starts from the previous iteration's promoted model."""
    its = loop.state["iterations"]
    if t < len(its):
        return its[t]
    prev = its[t - 1]["promote"] if t else loop.state["base"]
    its.append({"index": t, "model_dir": prev["model_dir"], "model_ref": prev["model_ref"]})
    loop.save()
    return its[t]


def _run_iteration(loop: Loop, it: dict, gold) -> None:
    from tunefleet.pipelines.selfplay_data import lazy_pool

    todo = [s for s in STEPS if s not in it]
    if not todo:
        return
    if len(todo) < len(STEPS):
        print(f"[selfplay] iteration {it['index']}: resuming at {todo[0]} (done: "
              f"{', '.join(s for s in STEPS if s in it)})", flush=True)
    with lazy_pool(loop.cfg, it["model_dir"], f"{loop.name}-iter{it['index']}", it["index"]) as pool:
        for step in todo:
            it[step] = STEP_FNS[step](loop, it, pool, gold)
            loop.save()


def _identity(cfg: Config, name: str) -> str:
    """What must not change between a loop and its resumption: the config, with the run name
    resolved and without the tracking URI (`tunefleet run --resume` pins both)."""
    return dump_yaml(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name),
                                         tracking=dataclasses.replace(cfg.tracking, uri=None)))


def _start(cfg: Config, name: str) -> Loop:
    from tunefleet.models.registry import resolve_model

    root = selfplay_dir(name)
    state = read_json(root / "state.json", None)
    tracker = _start_tracker(cfg, name, {"tunefleet.kind": "selfplay"})
    if state is None:
        base = {"model_dir": str(resolve_model(cfg.model.name)), "model_ref": f"base:{cfg.model.name}"}
        state = {"name": name, "config": _identity(cfg, name), "base": base, "iterations": []}
    elif state["config"] != _identity(cfg, name):
        raise RuntimeError(f"{root / 'state.json'}: self-play {name!r} was started with another config; "
                           "resume it with the same one, or pick a new run.name")
    loop = Loop(cfg, name, root, tracker, state)
    loop.save()
    return loop


def run_selfplay_job(cfg: Config, ship_package: bool = False) -> JobResult:
    """Run (or resume, by `run.name`) the loop of `cfg.selfplay.iterations` iterations."""
    from tunefleet.cluster import init_ray
    from tunefleet.models.registry import load_tokenizer
    from tunefleet.pipelines.selfplay_data import fitting_gold, gold_rows

    init_ray(ship_package=ship_package)
    name = run_name(cfg)
    loop = _start(cfg, name)
    gold = fitting_gold(cfg, gold_rows(cfg), load_tokenizer(loop.state["base"]["model_dir"]))
    print(f"[selfplay] {name}: {cfg.algorithm.type}, {cfg.selfplay.iterations} iteration(s), {len(gold)} gold "
          f"prompts; state {loop.root / 'state.json'}", flush=True)
    try:
        for t in range(cfg.selfplay.iterations):
            it = _iteration(loop, t)
            _run_iteration(loop, it, gold)
            if "stopped" in it["promote"]:
                print(f"[selfplay] stopping after iteration {t}: {it['promote']['stopped']}", flush=True)
                loop.tracker.set_tags({"tunefleet.stop_reason": it["promote"]["stopped"]})
                break
    except StoppedMidIteration as stop:
        loop.tracker.finish("KILLED")
        print(f"[selfplay] {stop}; resume with: tunefleet run --resume {loop.tracker.run_id} (or rerun with "
              f"run.name={name})", flush=True)
        return JobResult(loop.tracker.run_id, {"stopped": 1.0}, [], None)
    except BaseException:
        loop.tracker.finish("FAILED")
        raise
    return _finish(loop)


def _finish(loop: Loop) -> JobResult:
    its = loop.state["iterations"]
    promoted = [it for it in its if "model_dir" in it.get("promote", {})]
    final = promoted[-1]["promote"] if promoted else loop.state["base"]
    metrics = {"selfplay/iterations": float(len(its)), "selfplay/promoted": float(len(promoted))}
    if its:
        metrics["eval.objective"] = float(promoted[-1]["evaluate"]["after"] if promoted else its[0]["train"]["start"])
    loop.tracker.set_tags({"tunefleet.selfplay.final_model": final["model_ref"]})
    loop.tracker.log_dict(loop.state, "selfplay/state.json")
    loop.tracker.finish("FINISHED")
    print(f"[selfplay] {loop.name}: final model {final['model_ref']} ({final['model_dir']})", flush=True)
    return JobResult(loop.tracker.run_id, metrics, loop.tracker.list_artifacts(), final["model_dir"])
