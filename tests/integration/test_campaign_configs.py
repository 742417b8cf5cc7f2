"""The shipped campaigns (jobs/campaigns/) run as written, with tiny-llama overrides: the method
campaign with an SFT, a DPO and a GRPO trial (the GRPO trial's rollout engine lives outside
the trial's placement group), and the DPO beta grid. Each trial is a child MLflow run."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tunefleet.cli.main import main
from tunefleet.config.campaign import load_campaign
from tunefleet.pipelines.sweep_job import plan
from tunefleet.pipelines.trial import PARENT_TAG

pytestmark = pytest.mark.slow
CAMPAIGNS = Path(__file__).resolve().parents[2] / "jobs" / "campaigns"
TINY = ["model.name=tiny-llama", "data.num_train=16", "trainer.max_steps=3", "trainer.batch_size=4",
        "trainer.micro_batch_size=4", "trainer.status_every_s=30", "checkpoint.every_steps=1", "eval.every_steps=1",
        "eval.limit=4", "eval.max_new_tokens=4", "campaign.budget.wall_time_s=900"]
CASES = {
    # seed 7 draws one trial of each method (checked below before anything runs)
    "methods": (["campaign.num_samples=3", "campaign.seed=7"], {"sft", "dpo", "grpo"}),
    "dpo_beta": (["space.common.trainer.lr={grid: [1.0e-3]}", "space.methods.dpo.beta={grid: [0.1]}"], {"dpo"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_campaign_runs_with_tiny_llama(ray_cluster, home, name):
    overrides, methods = CASES[name]
    uri = f"sqlite:///{home}/mlflow.db"
    args = [*TINY, *overrides, f"tracking.uri={uri}", "tracking.experiment=campaigns"]
    path = CAMPAIGNS / f"{name}.yaml"
    planned = plan(load_campaign(path, args), "x", None)[0]
    assert {t.method for t in planned} == methods
    assert main(["sweep", str(path), *args]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("campaigns")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`tunefleet.kind` = 'campaign'")
    kids = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len(kids) == len(planned)
    assert {k.data.tags["tunefleet.method"] for k in kids} == methods
    # Every trial trained and was scored (ASHA may stop one at its rung: KILLED, not FAILED).
    assert all(k.info.status in ("FINISHED", "KILLED") for k in kids), [k.info.status for k in kids]
    # (a random model's GRPO groups all score 0: zero advantages, so its loss is 0, not > 0)
    assert all("loss" in k.data.metrics and "eval/arith_l1/exact_match" in k.data.metrics for k in kids)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "report.html"} <= artifacts
