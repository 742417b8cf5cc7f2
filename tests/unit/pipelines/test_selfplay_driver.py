"""The self-play driver as a state machine, with fake steps (no Ray, no models): the order of
steps, promotion chaining model_t -> model_{t+1}, resuming after a crash without redoing a
finished step, stopping on regression, and the config checks of self-play methods."""

from contextlib import contextmanager

import pytest

from tunefleet.config import ConfigError, load_config
from tunefleet.pipelines import selfplay_data, selfplay_job

BASE = ["model.name=tiny-llama", "data.task=arith", "algorithm.type=spin", "eval.suites=[arith:1]",
        "tracking.enabled=false", "run.name=fake-loop"]


class Crash(RuntimeError):
    pass


def _fakes(monkeypatch, calls: list, objectives: dict, crash_at=None):
    """Steps that record (step, iteration) and return plausible records; `objectives`:
    iteration -> (start, after); `crash_at`: (step, iteration) raises Crash once."""
    crashed = []

    def make(step):
        def fn(loop, it, pool, gold):
            t = it["index"]
            if crash_at == (step, t) and not crashed:
                crashed.append(1)
                raise Crash(step)
            calls.append((step, t))
            if step == "train":
                start, after = objectives[t]
                return {"run_id": f"run{t}", "checkpoint": "/ckpt", "objective": ["eval/a/b", "max"],
                        "start": start, "after": after}
            if step == "evaluate":
                return selfplay_job._evaluate(loop, it, pool, gold)
            if step == "promote":
                if it["evaluate"]["regressed"] and loop.cfg.selfplay.stop_on_regression:
                    return {"stopped": "worse"}
                return {"model_dir": f"/m{t + 1}", "model_ref": f"models:/x/{t + 1}"}
            return {"step": step, "versions": [0], "sampling": "{}", "path": "/gen.parquet"}
        return fn

    monkeypatch.setattr(selfplay_job, "STEP_FNS", {s: make(s) for s in selfplay_job.STEPS})

    class NoPool:
        def close(self):
            pass

    @contextmanager
    def no_pool(cfg, model_dir, name, iteration):
        yield NoPool()

    monkeypatch.setattr(selfplay_data, "lazy_pool", no_pool)
    monkeypatch.setattr(selfplay_data, "gold_rows", lambda cfg: ["gold"])
    monkeypatch.setattr(selfplay_data, "fitting_gold", lambda cfg, gold, tokenizer: gold)
    monkeypatch.setattr("tunefleet.models.registry.load_tokenizer", lambda path: None)
    monkeypatch.setattr("tunefleet.cluster.init_ray", lambda **kw: None)
    monkeypatch.setattr("tunefleet.models.registry.resolve_model", lambda name: f"/models/{name}")


def test_iterations_chain_models_and_resume_after_a_crash(home, monkeypatch):
    cfg = load_config(None, BASE + ["selfplay.iterations=2"])
    calls = []
    _fakes(monkeypatch, calls, {0: (0.1, 0.3), 1: (0.3, 0.4)}, crash_at=("train", 1))
    with pytest.raises(Crash):
        selfplay_job.run_selfplay_job(cfg)
    assert calls == [(s, 0) for s in selfplay_job.STEPS] + [("generate", 1), ("build", 1)]
    calls.clear()
    result = selfplay_job.run_selfplay_job(cfg)  # the rerun: only iteration 1's unfinished steps
    assert calls == [("train", 1), ("evaluate", 1), ("promote", 1)]
    state = selfplay_job.read_json(selfplay_dir_state(), None)
    its = state["iterations"]
    assert [it["model_dir"] for it in its] == ["/models/tiny-llama", "/m1"]  # model_1 generates iteration 1
    assert [it["model_ref"] for it in its] == ["base:tiny-llama", "models:/x/1"]
    assert result.checkpoint == "/m2" and result.metrics["eval.objective"] == 0.4
    calls.clear()
    selfplay_job.run_selfplay_job(cfg)  # a finished loop reruns nothing
    assert calls == []


def selfplay_dir_state():
    return selfplay_job.selfplay_dir("fake-loop") / "state.json"


@pytest.mark.parametrize("stop, expected", [(True, 1), (False, 3)])
def test_a_worse_objective_stops_the_loop_unless_told_not_to(home, monkeypatch, stop, expected):
    cfg = load_config(None, BASE + ["selfplay.iterations=3", f"selfplay.stop_on_regression={str(stop).lower()}"])
    calls = []
    _fakes(monkeypatch, calls, {0: (0.5, 0.2), 1: (0.2, 0.3), 2: (0.3, 0.4)})
    result = selfplay_job.run_selfplay_job(cfg)
    assert sorted({t for _, t in calls}) == list(range(expected))
    # Stopped: the final model is the base (model_0 beat model_1); otherwise the last promoted.
    assert result.checkpoint == ("/models/tiny-llama" if stop else "/m3")


def test_evaluate_honours_the_objective_direction(home, monkeypatch):
    cfg = load_config(None, BASE)
    loop = selfplay_job.Loop(cfg, "x", home, selfplay_job._start_tracker(cfg, "x"), {})
    it = {"index": 1, "train": {"run_id": "r", "objective": ["eval/p/word_perplexity", "min"], "start": 10.0,
                                "after": 12.0}}
    assert selfplay_job._evaluate(loop, it, None, None)["regressed"] is True
    it["train"].update(start=12.0, after=10.0)
    assert selfplay_job._evaluate(loop, it, None, None)["regressed"] is False
    it["train"]["start"] = None
    with pytest.raises(RuntimeError, match="no objective"):
        selfplay_job._evaluate(loop, it, None, None)


def test_a_changed_config_is_not_resumed_silently(home, monkeypatch):
    calls = []
    _fakes(monkeypatch, calls, {0: (0.1, 0.2)})
    selfplay_job.run_selfplay_job(load_config(None, BASE + ["selfplay.iterations=1"]))
    # What `tunefleet run --resume PARENT_RUN_ID` pins (the tracking URI) is not a change.
    calls.clear()
    selfplay_job.run_selfplay_job(load_config(None, BASE + ["selfplay.iterations=1", "tracking.uri=sqlite:///x.db"]))
    assert calls == []
    with pytest.raises(RuntimeError, match="another config"):
        selfplay_job.run_selfplay_job(load_config(None, BASE + ["selfplay.iterations=1", "algorithm.beta=0.5"]))


@pytest.mark.parametrize("overrides, field", [
    (["algorithm.type=ssr"], "selfplay.judge.type"),  # SSR needs a model judge
    (["algorithm.type=iterative_dpo"], "selfplay.samples_per_prompt"),  # best vs worst needs k >= 2
    (["eval.suites=[]"], "eval.suites"),  # promotion needs an objective
    (["selfplay.judge.params={normalise: true}", "selfplay.judge.type=exact_match"], "selfplay.judge.params.normalise"),
    (["selfplay.judge.type=llm_judge", "selfplay.judge.verdict_regex=yes"], "selfplay.judge.verdict_regex"),
    (["algorithm.type=rft", "algorithm.beta=0.1"], "algorithm.beta"),  # beta belongs to the DPO family
    (["selfplay.iterations=0"], "selfplay.iterations"),
    (["reference.mode=nope"], "reference.mode"),  # checked as the DPO run each SPIN iteration is
])
def test_bad_selfplay_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [o for o in BASE if o != "tracking.enabled=false"] + overrides)
    assert err.value.path == field, str(err.value)


def test_a_stopped_training_ends_the_loop_resumably(home, monkeypatch):
    """SIGTERM during an iteration's training (`ray job stop`): the run checkpoints and returns
    `stopped`; the loop ends KILLED without recording the step, so a rerun resumes it."""
    from tunefleet.pipelines.train_job import JobResult

    cfg = load_config(None, BASE + ["selfplay.iterations=1"])
    _fakes(monkeypatch, [], {0: (0.1, 0.2)})
    monkeypatch.setitem(selfplay_job.STEP_FNS, "train", selfplay_job._train)
    monkeypatch.setattr("tunefleet.pipelines.train_job.run_train_job",
                        lambda cfg, trial: JobResult("child", {"stopped": 1.0, "step": 3.0}))
    result = selfplay_job.run_selfplay_job(cfg)
    assert result.metrics == {"stopped": 1.0}
    (it,) = selfplay_job.read_json(selfplay_dir_state(), None)["iterations"]
    assert "build" in it and "train" not in it
