"""`tunefleet sweep` through the real stack: an ASHA campaign of SFT and DPO trials on Ray
Tune over Ray Train (tiny-llama, one worker, one trial at a time), each trial a child MLflow
run of the campaign's, eval points reported to Tune at token budget points, a leaderboard."""

import csv
import io
import json
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tf_testutil import metric_history

from tunefleet.cli.main import main
from tunefleet.pipelines.trial import PARENT_TAG

pytestmark = pytest.mark.slow


def _campaign(tmp_path, home, trials: int):
    ppl = tmp_path / "text.jsonl"
    ppl.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                           ["1 + 1 = 2", "3 + 4 = 7", "the cat sat on the mat", "5 + 2 = 7"]))
    path = tmp_path / "campaign.yaml"
    # SFT trains ~11 target tokens a step here and DPO ~22: rungs at 32 and 64 tokens fall at
    # different steps for the two methods, which is the point of counting in tokens.
    path.write_text(textwrap.dedent(f"""\
        campaign:
          name: sweep-test
          overrides: [model.name=tiny-llama, data.task=arith, data.level=1, data.num_train=32, data.num_eval=0,
                      data.max_length=128, trainer.batch_size=4, trainer.micro_batch_size=4, trainer.max_steps=6,
                      trainer.num_workers=1, checkpoint.every_steps=0, 'eval.suites=[ppl:{ppl}]', eval.limit=4,
                      eval.max_new_tokens=4, 'tracking.uri=sqlite:///{home}/mlflow.db', tracking.experiment=sweeps]
          num_samples: {trials}
          seed: 3
          scheduler: {{type: asha, reduction_factor: 2, rungs: 2, max_tokens: 64}}
          objective: {{metric: eval/ppl_text/word_perplexity, mode: min}}
          budget: {{max_concurrent: 1}}
        space:
          common:
            trainer.lr: {{loguniform: [1.0e-4, 3.0e-2]}}
          methods:
            sft: {{}}
            dpo: {{beta: {{choice: [0.1, 0.5]}}}}
        """))
    return path


def test_asha_campaign_runs_trials_as_child_runs_with_a_leaderboard(ray_cluster, home, tmp_path, capsys):
    trials = 4  # 8 take ~7 min on 2 shared CPUs (~45 s a trial, mostly worker start-up)
    assert main(["sweep", str(_campaign(tmp_path, home, trials))]) == 0
    out = capsys.readouterr().out
    assert "best: t" in out and "rank  trial" in out
    uri = f"sqlite:///{home}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweeps")
    parents = client.search_runs([exp.experiment_id], "tags.`tunefleet.kind` = 'campaign'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["tunefleet.trial_id"] for c in children) == [f"t{i:03d}" for i in range(trials)]
    assert {c.data.tags["tunefleet.method"] for c in children} == {"sft", "dpo"}
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    arts |= {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"leaderboard.csv", "leaderboard.md", "plots/objective_vs_tokens.png", "plots/best_per_method.png",
            "plots/pareto.png", "report.html"} <= arts
    cost = client.get_run(parent.info.run_id).data.metrics
    assert 0 < cost["campaign/cpu_seconds_to_best"] <= cost["campaign/cpu_seconds_total"]

    local = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path))
    board = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert len(board) == trials and {r["status"] for r in board} <= {"finished", "stopped"}
    scores = [float(r["objective"]) for r in board]
    assert scores == sorted(scores)  # mode min: best (lowest perplexity) first
    by_id = {c.data.tags["tunefleet.trial_id"]: c for c in children}
    for r in board:
        child = by_id[r["trial"]]
        if r["status"] == "finished":
            assert child.info.status == "FINISHED"
            assert child.data.metrics["eval.objective"] == pytest.approx(float(r["objective"]))
        else:  # its score is the one it was stopped on, which its run logged too
            assert child.info.status == "KILLED" and child.data.tags["tunefleet.stop_reason"] == "asha"
            history = metric_history(uri, child.info.run_id, "eval/ppl_text/word_perplexity").values()
            assert any(v == pytest.approx(float(r["objective"])) for v in history), (r, history)
    stopped = [r for r in board if r["status"] == "stopped"]
    finished = [r for r in board if r["status"] == "finished"]
    assert finished
    for method in ("sft", "dpo"):  # a stopped trial trained fewer tokens than a finished one of its method
        done = [float(r["train_tokens"]) for r in finished if r["method"] == method]
        for r in (r for r in stopped if r["method"] == method and done):
            assert float(r["train_tokens"]) < min(done), r
    print(f"sweep: {len(finished)} finished, {len(stopped)} stopped")
