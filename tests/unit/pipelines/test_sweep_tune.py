"""The campaign driver's Tune pieces that must survive the driver: the stop log, the token
budget, the status line's ETA and the trial index of a Tune trial or result."""

import pickle
from pathlib import Path
from types import SimpleNamespace

from tunefleet.pipelines.sweep_state import StopLog, TokenLog
from tunefleet.pipelines.sweep_tune import StatusLine, TokenBudget, eta, index_from_dir, result_index, trial_index


def test_stop_log_keeps_the_first_reason_and_only_plain_values(tmp_path):
    log = StopLog(tmp_path)
    log.record(3, "asha", {"step": 4, "train_tokens": 64, "eval/x": 0.5, "config": {"trial": 3}, "done": False})
    log.record(3, "token_budget", {"step": 6})  # a trial is stopped once: the first reason stands
    assert StopLog(tmp_path).load() == {3: {"reason": "asha", "step": 4.0, "train_tokens": 64.0, "eval/x": 0.5}}


def test_token_budget_counts_each_trials_newest_count_and_survives_a_pickle(tmp_path):
    stop = TokenBudget(100, TokenLog(tmp_path))
    assert stop("a", {"train_tokens": 40}) is False and not stop.stop_all()
    stop("a", {"train_tokens": 60})  # the same trial's newer count replaces its older one
    stop("b", {"step": 3})  # a report without tokens (a checkpoint) counts nothing
    assert not stop.stop_all() and TokenLog(tmp_path).total() == 60
    fresh = pickle.loads(pickle.dumps(TokenBudget(100, TokenLog(tmp_path))))  # what a restored campaign gets
    fresh("b", {"train_tokens": 39})
    assert not fresh.stop_all()
    fresh("b", {"train_tokens": 40})  # 60 spent before the restore + 40 now
    assert fresh.stop_all()
    assert not TokenBudget(None, TokenLog(tmp_path / "x"))("a", {"train_tokens": 10**9})


def test_eta_is_the_soonest_of_trials_wall_and_token_budgets():
    assert eta(100, 0, 9, None, 0, None) == "?"
    assert eta(100, 2, 6, None, 0, None) == "3m20s"  # 50 s a trial, 4 left
    assert eta(100, 2, 6, 150, 0, None) == "50s"  # the wall budget ends first
    assert eta(100, 2, 6, None, 500, 600) == "20s"  # 5 tokens/s, 100 left
    assert eta(200, 2, 6, 150, 0, None) == "0s"


def test_status_line_counts_states_and_best(tmp_path):
    stops = StopLog(tmp_path)
    stops.record(1, "asha", {"step": 2})
    line = StatusLine("eval/m", "max", "c", 7, 600, None, TokenLog(tmp_path), stops)
    trials = [SimpleNamespace(status=s, config={"trial": i}, trial_id=f"ab_{i:05d}")
              for i, s in enumerate(["TERMINATED", "TERMINATED", "RUNNING", "ERROR", "PENDING"])]
    line.on_trial_result(0, trials, trials[0], {"eval/m": 0.25})
    line.on_trial_result(0, trials, trials[2], {"eval/m": 0.75})
    line.on_trial_result(0, trials, trials[1], {"eval/m": 0.5})
    text = line.line(trials, 120.0)
    assert "7 trials: 1 running, 1 done, 1 stopped, 1 failed, 3 pending" in text  # 2 not created yet
    assert "best eval/m 0.75 (t002)" in text and "spent 2m00s of 10m00s" in text
    assert "ETA 2m40s" in text  # 40 s a trial, 4 left


def test_trial_index_from_our_config_else_tunes_counter():
    assert trial_index(SimpleNamespace(config={"trial": 4}, experiment_tag="9_x")) == 4
    assert trial_index(SimpleNamespace(config={"method": "dpo"}, experiment_tag="12_method=dpo,lr=0.1")) == 11
    # Tune's trial directories: searcher ids are 8 hex digits, generator ids `<hash>_<NNNNN>`
    path = "/r/c/_run_trial_4a10cb7c_3_method=sft,trainer_lr=0.0005_2026-12-03_20-10-02"
    assert result_index(SimpleNamespace(config={"method": "sft"}, path=path)) == 2
    assert index_from_dir("/r/c/_run_trial_7f7dc_00004_5_trial=4_2026-12-03_19-12-38") == 4
    assert index_from_dir("/r/c/driver_artifacts") is None


def test_optuna_is_told_only_scored_results_and_a_trial_ends_on_its_last_score():

    import optuna

    from tunefleet.config.campaign import load_campaign
    from tunefleet.pipelines.sweep_plan import optuna_space
    from tunefleet.pipelines.sweep_tune import optuna_search

    c = load_campaign(Path(__file__).resolve().parents[3] / "jobs" / "campaigns" / "methods.yaml",
                      ["model.name=tiny-llama", "campaign.search=optuna"])
    search = optuna_search(optuna_space(c), "eval/m", "max", seed=0)
    config = search.suggest("t1")
    assert config["method"] in ("sft", "dpo", "grpo")
    search.on_trial_result("t1", {"step": 2, "training_iteration": 1})  # a checkpoint report: ignored
    search.on_trial_result("t1", {"eval/m": 0.5, "training_iteration": 2})
    search.on_trial_complete("t1", {"step": 4, "training_iteration": 3})  # ended on a checkpoint report
    trial = search._ot_study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5
    assert pickle.loads(pickle.dumps(search))._scored["t1"]["eval/m"] == 0.5  # Tune pickles it
