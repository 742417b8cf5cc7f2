"""The pure half of `tunefleet sweep`: trial lists, the objective, ASHA's rungs, Tune's param
space, the leaderboard (rows, ranking, CSV, Markdown) and the CLI's config errors."""

import csv
import io
import textwrap
from pathlib import Path

import pytest

from tunefleet.cli.main import main
from tunefleet.config import ConfigError, load_config
from tunefleet.config.campaign import load_campaign
from tunefleet.pipelines import leaderboard as lb
from tunefleet.pipelines.sweep_plan import (
    draw_trials,
    from_optuna,
    objective,
    optuna_space,
    param_space,
    plan_trials,
    rungs,
    trial_spec,
)

ROOT = Path(__file__).resolve().parents[3]
METHODS, DPO_BETA = ROOT / "jobs" / "campaigns" / "methods.yaml", ROOT / "jobs" / "campaigns" / "dpo_beta.yaml"
TINY = ["model.name=tiny-llama"]


def test_random_trials_are_seeded_and_grid_trials_are_each_point_once():
    c = load_campaign(METHODS, TINY)
    a, b = draw_trials(c), draw_trials(c)
    assert a == b and len(a) == 9  # num_samples, the same draws for the same campaign.seed
    assert draw_trials(load_campaign(METHODS, [*TINY, "campaign.seed=1"])) != a
    g = draw_trials(load_campaign(DPO_BETA, TINY))
    assert len(g) == 6 and {(v["trainer.lr"], v["algorithm.beta"]) for _, v in g} == {
        (lr, beta) for lr in (1e-4, 5e-4) for beta in (0.01, 0.1, 0.5)}


def test_optuna_space_is_conditional_on_the_method():
    import optuna

    c = load_campaign(METHODS, [*TINY, "campaign.search=optuna"])
    assert sorted(m for m, _ in draw_trials(c)) == ["dpo", "grpo", "sft"]  # one stand-in per method
    define = optuna_space(c)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        constants = define(trial)
        config = {**trial.params, **constants}
        method, values = from_optuna(c, config)
        seen.add(method)
        assert ("dpo|algorithm.beta" in trial.params) == (method == "dpo")  # beta only when DPO is drawn
        assert ("grpo|algorithm.group_size" in trial.params) == (method == "grpo")
        assert 2.0e-4 <= values["trainer.lr"] <= 2.0e-3 and values["model.lora.r"] in (8, 16)
        if method == "grpo":  # a constant of the method's space comes back as itself
            assert values["algorithm.max_new_tokens"] == 8 and config["grpo|trainer.batch_size"] == 16
        spec = trial_spec(c, "m-x", None, (), 7, method, values)
        assert spec.config.algorithm.type == method and spec.config.run.name == f"m-x-t007-{method}"
        assert spec.config.trainer.lr == values["trainer.lr"]
        study.tell(trial, 0.5)
    assert seen == {"sft", "dpo", "grpo"}


def test_a_campaign_survives_its_state_file(tmp_path, monkeypatch):
    import json

    from tunefleet.config.campaign import campaign_from_dict, campaign_to_dict

    c = load_campaign(METHODS, TINY)
    back = campaign_from_dict(json.loads(json.dumps(campaign_to_dict(c))))
    assert back == c and draw_trials(back) == draw_trials(c)  # --resume plans the very same trials
    assert [t.config for t in plan_trials(back, "n", None)] == [t.config for t in plan_trials(c, "n", None)]
    bad = campaign_to_dict(c)
    bad["space"]["methods"]["dpo"]["betta"] = 0.1
    with pytest.raises(ConfigError, match="space.methods.dpo.betta.*did you mean"):
        campaign_from_dict(bad)


def test_plan_trials_names_each_run_uniquely_and_applies_the_rung_overrides():
    c = load_campaign(METHODS, TINY)
    trials = plan_trials(c, "methods-x", "sqlite:///t.db", ("eval.every_steps=3",))
    assert [t.config.run.name for t in trials[:2]] == [f"methods-x-t000-{trials[0].method}",
                                                       f"methods-x-t001-{trials[1].method}"]
    assert [t.trial_id for t in trials] == [f"t{i:03d}" for i in range(9)]
    for t in trials:
        assert t.config.algorithm.type == t.method and t.config.eval.every_steps == 3
        assert t.config.tracking.uri == "sqlite:///t.db" and t.config.trainer.lr == t.values["trainer.lr"]
        assert t.config.model.name == "tiny-llama"


def test_objective_comes_from_the_campaign_else_the_base_config():
    c = load_campaign(METHODS, TINY)
    cfg = plan_trials(c, "x", None)[0].config
    assert objective(c, cfg) == ("eval/arith_l1/exact_match", "max")
    # dpo_beta.yaml names its objective (dpo.yaml has no eval.objective): without it, an error
    assert objective(load_campaign(DPO_BETA, TINY), cfg) == ("eval/arith_l1/exact_match", "max")
    bare = load_campaign(DPO_BETA, [*TINY, "campaign.objective=null"])
    with pytest.raises(ConfigError, match="campaign.objective"):
        objective(bare, plan_trials(bare, "x", None)[0].config)
    with_obj = load_config(None, [*TINY, "eval.objective.metric=eval/heldout/loss"])
    assert objective(bare, with_obj) == ("eval/heldout/loss", "min")  # mode inferred: a loss


def test_asha_rungs_in_steps_and_in_tokens():
    """methods.yaml: max_steps 30, reduction_factor 3, 3 rungs -> grace 30 // 3**2 = 3 steps,
    rungs at 3, 9, 27; with max_tokens 9000: grace 1000 tokens, rungs 1000, 3000, 9000."""
    c = load_campaign(METHODS, TINY)
    r = rungs(c, 30)
    assert (r.time_attr, r.max_t, r.grace_period, r.reduction_factor) == ("step", 30, 3, 3)
    assert r.milestones() == [3, 9, 27] and r.overrides == ("eval.every_steps=3",)
    t = rungs(load_campaign(METHODS, [*TINY, "campaign.scheduler.max_tokens=9000"]), 30)
    assert (t.time_attr, t.max_t, t.grace_period) == ("train_tokens", 9000, 1000)
    assert t.milestones() == [1000, 3000, 9000] and t.overrides == ("eval.every_tokens=1000",)
    assert rungs(load_campaign(DPO_BETA, TINY), 30) is None  # fifo


def test_bad_max_tokens_fails_validation():
    with pytest.raises(ConfigError, match="campaign.scheduler.max_tokens"):
        load_campaign(METHODS, [*TINY, "campaign.scheduler.max_tokens=0"])
    with pytest.raises(ConfigError, match="eval.every_tokens"):
        load_config(None, [*TINY, "eval.every_tokens=-1"])


def test_tune_sees_only_trial_indices():
    trials = plan_trials(load_campaign(DPO_BETA, TINY), "x", None)
    assert param_space(trials) == {"trial": {"grid_search": [0, 1, 2, 3, 4, 5]}}


def _rows():
    return [lb.Row("t000", "sft", {"trainer.lr": 0.00123456}, 0.5, 120.0, 10.0, "finished", "r0", ((60, 0.3),)),
            lb.Row("t001", "dpo", {"algorithm.beta": 0.1}, 0.75, 40.0, 4.25, "stopped", "r1"),
            lb.Row("t002", "dpo", {"algorithm.beta": 0.5}, None, None, 1.0, "failed", "r2", error="boom"),
            lb.Row("t003", "sft", {"trainer.lr": 0.002}, 0.25, 120.0, 9.0, "finished", "r3")]


def test_leaderboard_ranks_by_mode_with_unscored_rows_last():
    assert [r.trial_id for r in lb.ranked(_rows(), "max")] == ["t001", "t000", "t003", "t002"]
    assert [r.trial_id for r in lb.ranked(_rows(), "min")] == ["t003", "t000", "t001", "t002"]
    best = lb.best_per_method(_rows(), "max")
    assert {m: r.trial_id for m, r in best.items()} == {"dpo": "t001", "sft": "t000"}


def test_leaderboard_csv_and_markdown():
    rows = list(csv.DictReader(io.StringIO(lb.to_csv(_rows(), "max"))))
    assert [r["trial"] for r in rows] == ["t001", "t000", "t003", "t002"]
    assert rows[1] == {"rank": "2", "trial": "t000", "method": "sft", "hyperparameters": "trainer.lr=0.00123",
                       "objective": "0.5", "train_tokens": "120", "seconds": "10.0", "cpu_s": "0", "gpu_s": "0",
                       "status": "finished", "run_id": "r0"}
    assert rows[3]["objective"] == "" and rows[3]["status"] == "failed"
    third = lb.to_csv([lb.Row("t9", "sft", {}, 1 / 3, None, None, "finished")], "max")
    assert float(next(csv.DictReader(io.StringIO(third)))["objective"]) == 1 / 3  # CSV: full precision
    md = lb.to_markdown(_rows(), "eval/arith_l1/exact_match", "max").splitlines()
    assert md[0] == ("| rank | trial | method | hyperparameters | eval/arith_l1/exact_match (max) | train_tokens | "
                     "seconds | cpu_s | gpu_s | status |")
    assert md[2] == "| 1 | t001 | dpo | algorithm.beta=0.1 | 0.75 | 40 | 4.2 | 0 | 0 | stopped |"
    assert len(md) == 6
    text = lb.to_text(_rows(), "eval/arith_l1/exact_match", "max").splitlines()
    assert text[0].split()[:5] == ["rank", "trial", "method", "hyperparameters", "arith_l1:exact_match"]


def test_leaderboard_plots_are_drawn(tmp_path):
    assert lb.objective_vs_tokens(_rows(), "m", "max", tmp_path / "a.png").stat().st_size > 1000
    assert lb.best_per_method_plot(_rows(), "m", "max", tmp_path / "b.png").stat().st_size > 1000
    assert lb.objective_vs_tokens(_rows()[1:3], "m", "max", tmp_path / "c.png") is None  # no curves


def test_sweep_cli_exits_2_on_a_bad_campaign(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        campaign: {name: x, overrides: [model.name=tiny-llama]}
        space: {methods: {sft: {bta: 0.1}}}
        """))
    assert main(["sweep", str(bad)]) == 2
    assert "config error: space.methods.sft.bta" in capsys.readouterr().err
    assert main(["sweep", str(METHODS), *TINY, "campaign.scheduler.type=pbt"]) == 2
    assert "config error: campaign.scheduler.mutate" in capsys.readouterr().err  # pbt needs what to mutate
    assert main(["sweep", "--resume", "x", str(METHODS)]) == 2
    assert "config error: --resume: takes only the campaign NAME" in capsys.readouterr().err
    assert main(["sweep"]) == 2
    assert "config error: campaign: missing" in capsys.readouterr().err
    monkeypatch.setenv("TUNEFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    assert main(["sweep", "--resume", "nope-20261203"]) == 2
    assert "config error: --resume: no campaign 'nope-20261203'" in capsys.readouterr().err


def test_campaign_resources_are_split_between_each_trials_workers(capsys):
    c = load_campaign(METHODS, TINY)  # resources: {cpus: 0.9, gpus: 0}
    assert {t.config.trainer.cpus_per_worker for t in plan_trials(c, "n", None)} == {0.9}
    two = load_campaign(METHODS, [*TINY, "trainer.num_workers=2", "trainer.batch_size=16",
                                  "campaign.resources.cpus=2"])
    assert {t.config.trainer.cpus_per_worker for t in plan_trials(two, "n", None)} == {1.0}
    mine = load_campaign(METHODS, [*TINY, "campaign.resources=null", "trainer.cpus_per_worker=0.5"])
    assert {t.config.trainer.cpus_per_worker for t in plan_trials(mine, "n", None)} == {0.5}
    gpus = [*TINY, "trainer.num_workers=2", "trainer.batch_size=16", "campaign.resources.gpus=1"]
    with pytest.raises(ConfigError, match="campaign.resources.gpus: bad value 1.*allowed: 0 or 2"):
        plan_trials(load_campaign(METHODS, gpus), "n", None)
    assert main(["validate", str(METHODS), *gpus]) == 2  # validate plans the trials too
    assert "campaign.resources.gpus" in capsys.readouterr().err


def test_a_trial_bigger_than_a_local_cluster_fails_before_it_waits_forever(monkeypatch, capsys):
    import ray

    from tunefleet import cluster
    from tunefleet.pipelines import sweep_job

    trials = plan_trials(load_campaign(METHODS, [*TINY, "campaign.resources.cpus=2"]), "n", None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(cluster, "started_locally", lambda: True)
    too_big = r"campaign.resources: trial t\d+ \(\w+\) needs [23].1 CPUs.*has 2; allowed: at most 1.9"
    with pytest.raises(ConfigError, match=too_big):
        sweep_job._check_fits(trials)
    monkeypatch.setattr(cluster, "started_locally", lambda: False)  # a given cluster may grow: a warning
    sweep_job._check_fits(trials)
    assert "[sweep] warning: trial" in capsys.readouterr().out
    fits = plan_trials(load_campaign(METHODS, TINY), "n", None)  # 0.9 + 0.1, GRPO 0.9 + 1 + 0.1
    monkeypatch.setattr(cluster, "started_locally", lambda: True)
    sweep_job._check_fits(fits)


def test_the_demo_campaign_plans_sft_dpo_and_grpo_that_fit_two_cpus():
    from tunefleet.cli.main import DEMO_CAMPAIGN

    c = load_campaign(DEMO_CAMPAIGN)
    trials = plan_trials(c, "demo-x", None)
    assert sorted(t.method for t in trials) == ["dpo", "grpo", "sft", "sft"]
    assert all(t.config.model.name == "smollm2-135m-instruct" and t.config.model.lora for t in trials)
    from tunefleet.pipelines.sweep_job import TRIAL_CPU
    from tunefleet.pipelines.sweep_plan import trial_resources

    assert max(TRIAL_CPU + trial_resources(t.config)[0] for t in trials) <= 2.0
