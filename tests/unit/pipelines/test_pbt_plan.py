"""PBT campaigns without Ray running: what may be mutated, the perturbation points and their
overrides, Tune's view of each trial, and the exploit keeping a trial's own identity."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from tunefleet.config import ConfigError
from tunefleet.config.campaign import load_campaign
from tunefleet.pipelines.sweep_plan import param_space, pbt_mutations, plan_trials, rungs

ROOT = Path(__file__).resolve().parents[3]
DPO_BETA = ROOT / "jobs" / "campaigns" / "dpo_beta.yaml"
PBT = ["model.name=tiny-llama", "campaign.scheduler.type=pbt", "campaign.scheduler.rungs=3",
       "campaign.scheduler.mutate=[trainer.lr,algorithm.beta]"]


def test_pbt_points_are_even_steps_each_with_an_eval_and_a_checkpoint_to_exploit():
    r = rungs(load_campaign(DPO_BETA, PBT), 30)
    assert (r.time_attr, r.grace_period, r.reduction_factor) == ("step", 10, 1)
    assert r.milestones() == [10, 20, 30]
    assert r.overrides == ("eval.every_steps=10", "checkpoint.every_steps=10", "checkpoint.keep=3")


@pytest.mark.parametrize("override, field, says", [
    ("campaign.scheduler.mutate=[]", "campaign.scheduler.mutate", "at least one"),
    ("campaign.scheduler.mutate=[model.lora.r]", r"campaign.scheduler.mutate\[0\]", "trainer.lr"),
    ("campaign.scheduler.mutate=[trainer.batch_size]", r"campaign.scheduler.mutate\[0\]", "trainer.lr"),
    ("campaign.scheduler.mutate=[trainer.weight_decay]", r"mutate\[0\]", "every method samples"),
    ("campaign.scheduler.max_tokens=900", "campaign.scheduler.max_tokens", "null with pbt"),
    ("campaign.scheduler.rungs=1", "campaign.scheduler.rungs", ">= 2"),
    ("campaign.search=optuna", "campaign.search", "random or grid"),
    ("campaign.scheduler.quantile_fraction=0.75", "quantile_fraction", r"\(0, 0.5\]"),
])
def test_bad_pbt_settings_fail_naming_the_field(override, field, says):
    with pytest.raises(ConfigError, match=f"{field}.*{says}"):
        load_campaign(DPO_BETA, [*PBT, override])


def test_mutate_is_only_for_pbt():
    with pytest.raises(ConfigError, match="campaign.scheduler.mutate.*unless type is pbt"):
        load_campaign(DPO_BETA, ["model.name=tiny-llama", "campaign.scheduler.mutate=[trainer.lr]"])


def test_tune_sees_each_trials_method_and_values_to_perturb():
    from ray.tune.search.sample import Float, Function

    c = load_campaign(DPO_BETA, [*PBT, "space.common.trainer.lr={loguniform: [1.0e-5, 1.0e-3]}",
                                 "campaign.search=random", "campaign.num_samples=3"])
    trials = plan_trials(c, "x", None)
    space = param_space(trials, pbt=True)
    assert isinstance(space["values"], Function) and isinstance(space["method"], Function)
    assert space["values"].func({"trial": 2}) == trials[2].values and space["method"].func({"trial": 2}) == "dpo"
    m = pbt_mutations(c)["values"]
    assert m["algorithm.beta"] == [0.01, 0.1, 0.5]  # a grid or choice: PBT moves to a neighbour
    assert isinstance(m["trainer.lr"], Float) and (m["trainer.lr"].lower, m["trainer.lr"].upper) == (1e-5, 1e-3)


def test_an_exploiting_trial_keeps_its_index_and_counts_its_generations(tmp_path):
    from tunefleet.pipelines.sweep_state import StopLog
    from tunefleet.pipelines.sweep_tune import TrainCheckpointPBT, scheduler

    c = load_campaign(DPO_BETA, PBT)
    pbt = scheduler(rungs(c, 30), StopLog(tmp_path), {"hyperparam_mutations": pbt_mutations(c),
                                                      "resample_probability": 0.0})
    assert isinstance(pbt, TrainCheckpointPBT) and pbt._perturbation_interval == 10
    pbt.set_search_properties("eval/x", "min")
    donor = SimpleNamespace(trial_id="b", config={"trial": 4, "method": "dpo",
                                                  "values": {"trainer.lr": 5e-4, "algorithm.beta": 0.1}})
    me = SimpleNamespace(trial_id="a", config={"trial": 1, "method": "dpo", "pbt": {"generation": 2},
                                               "values": {"trainer.lr": 1e-4, "algorithm.beta": 0.5}})
    pbt.newest["b"] = ("/ckpt/checkpoint_000020", 20)
    new, _ = pbt._get_new_config(me, donor)
    assert new["trial"] == 1 and new["pbt"] == {"generation": 3, "from": "t004", "step": 20}
    assert new["values"]["trainer.lr"] in (1e-4, 5e-4)  # a grid: a neighbour of 5e-4, or itself at the end
    assert new["values"]["algorithm.beta"] in (0.01, 0.5)  # a neighbour of the donor's 0.1
    # a donor's final checkpoint leaves nothing to train: the trial goes on as it is
    pbt.newest["b"] = ("/ckpt/checkpoint_000030", 30)
    pbt._exploit = lambda *a: pytest.fail("exploited a final checkpoint")
    pbt._checkpoint_or_exploit(me, None, [donor], [me])
    # the donor's final point ends it: no exploit is decided on it
    assert pbt.on_trial_result(None, donor, {"final": True, "eval/x": 1.0, "step": 30}) == pbt.CONTINUE


def test_pbt_runs_every_trial_at_once():
    from tunefleet.pipelines.sweep_job import plan

    c = load_campaign(DPO_BETA, PBT)  # 6 grid trials, one at a time
    with pytest.raises(ConfigError, match="campaign.budget.max_concurrent.*6 trials together.*>= 6"):
        plan(c, "x", None)
    assert plan(load_campaign(DPO_BETA, [*PBT, "campaign.budget.max_concurrent=6"]), "x", None)[3].grace_period == 10


def test_the_shipped_pbt_campaign_plans_four_trials_run_together():
    from tunefleet.pipelines.sweep_job import plan

    c = load_campaign(ROOT / "jobs" / "campaigns" / "dpo_pbt.yaml", ["model.name=tiny-llama"])
    trials, metric, mode, r, extra = plan(c, "x", None)
    assert len(trials) == 4 and {t.method for t in trials} == {"dpo"} and (metric, mode)[1] == "max"
    assert r.milestones() == [10, 20, 30] and "checkpoint.every_steps=10" in extra
    assert set(pbt_mutations(c)["values"]) == {"trainer.lr", "algorithm.beta"}
    assert all(t.config.trainer.cpus_per_worker == 0.4 for t in trials)
