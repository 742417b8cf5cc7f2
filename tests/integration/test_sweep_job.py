"""`tunefleet sweep` through the real stack: an 8-trial ASHA campaign of SFT and DPO trials
proposed by Optuna (Tune's OptunaSearch over a define-by-run conditional space), on Ray Tune
over Ray Train (tiny-llama, one worker, two trials at a time), each trial a child MLflow run
of the campaign's, eval points reported to Tune at token budget points. Its driver is killed
with SIGKILL mid-campaign and `tunefleet sweep --resume` finishes it; then the leaderboard,
the plots and report.html (in headless Chromium) are checked."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from report_browser import open_report
from tf_testutil import metric_history

from tunefleet.cli.main import main
from tunefleet.pipelines.trial import PARENT_TAG

pytestmark = pytest.mark.slow
TRIALS = 8
METRIC = "eval/ppl_text/word_perplexity"


def _campaign(tmp_path, home):
    ppl = tmp_path / "text.jsonl"
    ppl.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                           ["1 + 1 = 2", "3 + 4 = 7", "the cat sat on the mat", "5 + 2 = 7"]))
    path = tmp_path / "campaign.yaml"
    # SFT trains ~11 target tokens a step here and DPO ~22: rungs at 16, 32 and 64 tokens fall
    # at different steps for the two methods, which is the point of counting in tokens.
    path.write_text(textwrap.dedent(f"""\
        campaign:
          name: sweep-test
          overrides: [model.name=tiny-llama, data.task=arith, data.level=1, data.num_train=32, data.num_eval=0,
                      data.max_length=128, trainer.batch_size=4, trainer.micro_batch_size=4, trainer.max_steps=6,
                      trainer.num_workers=1, checkpoint.every_steps=2, 'eval.suites=[ppl:{ppl}]', eval.limit=4,
                      eval.max_new_tokens=4, 'tracking.uri=sqlite:///{home}/mlflow.db', tracking.experiment=sweeps]
          num_samples: {TRIALS}
          search: optuna  # proposes each trial as it goes (the method first): restored on resume
          seed: 3
          scheduler: {{type: asha, reduction_factor: 2, rungs: 3, max_tokens: 64}}
          objective: {{metric: {METRIC}, mode: min}}
          budget: {{max_concurrent: 2}}
          resources: {{cpus: 0.9}}  # + 0.1 for each trial's driver: two trials at a time on the 2 CPUs
        space:
          common:
            trainer.lr: {{loguniform: [1.0e-4, 3.0e-2]}}
          methods:
            sft: {{}}
            dpo: {{beta: {{choice: [0.1, 0.5]}}}}
        """))
    return path


def _children(client, exp_id: str, parent_id: str) -> list:
    return client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=100)


def _kill_mid_campaign(path: Path, client, tmp_path) -> tuple[str, dict, str]:
    """Start the campaign's driver as a process of its own; SIGKILL it once a trial has
    finished and the next one has logged an eval point. Returns (NAME, the children then, the
    interrupted trial's id)."""
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "tunefleet.cli.main", "sweep", str(path)], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(2)
            exp = client.get_experiment_by_name("sweeps")
            parents = client.search_runs([exp.experiment_id], "tags.`tunefleet.kind` = 'campaign'") if exp else []
            if not parents:
                continue
            kids = {c.data.tags["tunefleet.trial_id"]: c for c in _children(client, exp.experiment_id,
                                                                            parents[0].info.run_id)}
            done = [t for t, c in kids.items() if c.info.status == "FINISHED"]
            # a trial past its first checkpoint (step 2) and an eval point: it resumes mid-run
            running = [t for t, c in kids.items() if t not in done and METRIC in c.data.metrics
                       and max((m.step for m in client.get_metric_history(c.info.run_id, "loss")), default=0) >= 3]
            if done and running:
                driver.send_signal(signal.SIGKILL)
                driver.wait(30)
                return parents[0].data.tags["tunefleet.campaign_run"], kids, max(running)
        pytest.fail(f"no trial finished in time (rc {driver.poll()}):\n{(tmp_path / 'driver.log').read_text()}")
    finally:
        if driver.poll() is None:
            driver.kill()


def test_asha_campaign_survives_sigkill_and_logs_a_leaderboard_and_report(ray_cluster, home, tmp_path, capsys):
    uri = f"sqlite:///{home}/mlflow.db"
    client = MlflowClient(uri)
    name, before, interrupted = _kill_mid_campaign(_campaign(tmp_path, home), client, tmp_path)
    killed_at = time.time() * 1000
    finished_before = {t: c for t, c in before.items() if c.info.status == "FINISHED"}

    assert main(["sweep", "--resume", name]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "best: t" in out and "rank  trial" in out
    exp = client.get_experiment_by_name("sweeps")
    parents = client.search_runs([exp.experiment_id], "tags.`tunefleet.kind` = 'campaign'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run, resumed
    parent = parents[0]
    children = _children(client, exp.experiment_id, parent.info.run_id)
    ids = [c.data.tags["tunefleet.trial_id"] for c in children]
    assert sorted(ids) == [f"t{i:03d}" for i in range(TRIALS)]  # one child per trial: none duplicated
    assert {c.data.tags["tunefleet.method"] for c in children} == {"sft", "dpo"}
    by_id = {c.data.tags["tunefleet.trial_id"]: c for c in children}
    for t, c in finished_before.items():  # not rerun: the same run, nothing logged after the kill
        assert by_id[t].info.run_id == c.info.run_id and by_id[t].info.end_time == c.info.end_time
        steps = client.get_metric_history(c.info.run_id, "train_tokens")
        assert steps and max(m.timestamp for m in steps) < killed_at
    # The interrupted trial went on in its own child run, from its checkpoint, counting tokens on.
    run = by_id[interrupted]
    assert run.info.run_id == before[interrupted].info.run_id
    losses = client.get_metric_history(run.info.run_id, "loss")
    after = [m.step for m in losses if m.timestamp > killed_at]
    if run.data.tags.get("tunefleet.stop_reason") != "asha" or after:  # (unless ASHA had stopped it first)
        assert after and min(after) > 2, after  # its first step after the kill came from a checkpoint
        tokens = sorted(client.get_metric_history(run.info.run_id, "train_tokens"), key=lambda m: m.step)
        assert [m.value for m in tokens] == sorted(m.value for m in tokens)  # the count went on, not from 0

    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    arts |= {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"leaderboard.csv", "leaderboard.md", "plots/objective_vs_tokens.png", "plots/best_per_method.png",
            "plots/pareto.png", "report.html"} <= arts
    cost = client.get_run(parent.info.run_id).data.metrics
    assert 0 < cost["campaign/cpu_seconds_to_best"] <= cost["campaign/cpu_seconds_total"]
    local = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path))
    board = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    _check_board(board, by_id, uri)
    report = client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))
    page = open_report(report)
    assert page.errors == [] and page.images and all(w > 0 and h > 0 for w, h in page.images)
    assert page.rows == TRIALS


def _check_board(board: list[dict], by_id: dict, uri: str) -> None:
    assert len(board) == TRIALS and {r["status"] for r in board} <= {"finished", "stopped"}
    scores = [float(r["objective"]) for r in board]
    assert scores == sorted(scores)  # mode min: best (lowest perplexity) first
    for r in board:
        child = by_id[r["trial"]]
        if r["status"] == "finished":
            assert child.info.status == "FINISHED"
            assert child.data.metrics["eval.objective"] == pytest.approx(float(r["objective"]))
        else:  # its score is the one it was stopped on, which its run logged too
            assert child.info.status == "KILLED" and child.data.tags["tunefleet.stop_reason"] == "asha"
            history = metric_history(uri, child.info.run_id, METRIC).values()
            assert any(v == pytest.approx(float(r["objective"])) for v in history), (r, history)
    stopped = [r for r in board if r["status"] == "stopped"]
    finished = [r for r in board if r["status"] == "finished"]
    assert finished and stopped  # 8 trials over 3 rungs: ASHA stops some
    for method in ("sft", "dpo"):  # a stopped trial trained fewer tokens than a finished one of its method
        done = [float(r["train_tokens"]) for r in finished if r["method"] == method]
        for r in (r for r in stopped if r["method"] == method and done):
            assert float(r["train_tokens"]) < min(done), r
    print(f"sweep: {len(finished)} finished, {len(stopped)} stopped")
