"""A PBT campaign through the real stack: four SFT trials on tiny-llama (a learning rate grid
from useless to good) run at once under Ray Tune's PopulationBasedTraining. At each
perturbation point the worst trial restores the best one's Ray Train checkpoint into a new
Train run, with the donor's config and its learning rate perturbed, and logs on into its own
MLflow child run."""

import json
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tunefleet.cli.main import main
from tunefleet.pipelines.trial import PARENT_TAG

pytestmark = pytest.mark.slow
METRIC = "eval/ppl_text/word_perplexity"
LRS = [1.0e-6, 1.0e-5, 3.0e-3, 1.0e-2]
STEPS, EVERY = 12, 4  # rungs: 3 -> points at steps 4 and 8 (12 is the last)


def _campaign(tmp_path: Path, home: Path) -> Path:
    ppl = tmp_path / "text.jsonl"
    ppl.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["1 + 1 = 2", "3 + 4 = 7", "5 + 2 = 7"]))
    path = tmp_path / "pbt.yaml"
    path.write_text(textwrap.dedent(f"""\
        campaign:
          name: pbt-test
          overrides: [model.name=tiny-llama, data.task=arith, data.level=1, data.num_train=48, data.num_eval=0,
                      data.max_length=128, trainer.batch_size=4, trainer.micro_batch_size=4,
                      trainer.max_steps={STEPS}, trainer.warmup_steps=0, trainer.num_workers=1,
                      'eval.suites=[ppl:{ppl}]', eval.limit=3, 'tracking.uri=sqlite:///{home}/mlflow.db',
                      tracking.experiment=pbt]
          search: grid
          scheduler: {{type: pbt, rungs: 3, mutate: [trainer.lr], quantile_fraction: 0.25, resample_probability: 0}}
          objective: {{metric: {METRIC}, mode: min}}
          budget: {{max_concurrent: 4}}
          resources: {{cpus: 0.4}}  # + 0.1 for each trial's driver: the four at once on 2 CPUs
        space:
          common:
            trainer.lr: {{grid: {LRS}}}
          methods:
            sft: {{}}
        """))
    return path


def test_pbt_trials_exploit_a_donors_checkpoint_into_their_own_runs(ray_cluster, home, tmp_path):
    uri = f"sqlite:///{home}/mlflow.db"
    assert main(["sweep", str(_campaign(tmp_path, home))]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("pbt")
    parent = client.search_runs([exp.experiment_id], "tags.`tunefleet.kind` = 'campaign'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    by_id = {c.data.tags["tunefleet.trial_id"]: c for c in children}
    assert sorted(by_id) == ["t000", "t001", "t002", "t003"]  # one child per trial: an exploit adds none
    assert all(c.info.status == "FINISHED" for c in children)
    exploited = {t: c for t, c in by_id.items() if "tunefleet.pbt_generation" in c.data.tags}
    assert exploited, "no trial exploited another"
    logs = list(Path(home).glob("**/pbt_global.txt"))  # Tune's own record: [.., .., .., .., donor config, new config]
    assert logs
    policies = [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]
    for t, child in exploited.items():
        last = json.loads(child.data.tags["tunefleet.pbt_last_exploit"])
        donor, step = last["from"], last["step"]
        assert donor != t and step in (EVERY, 2 * EVERY), last  # never a final checkpoint
        # It took the donor's config as it was then (Tune's record of the exploit), its learning
        # rate moved to a neighbouring grid value (kept at the grid's end), and restored the
        # donor's checkpoint at `step` into a new Train run, which went on to the last step.
        gen = int(child.data.tags["tunefleet.pbt_generation"])
        donor_cfg = next(p[4] for p in policies if p[5]["trial"] == int(t[1:]) and p[5]["pbt"]["generation"] == gen)
        assert donor_cfg["trial"] == int(donor[1:])
        i, j = LRS.index(donor_cfg["values"]["trainer.lr"]), LRS.index(last["values"]["trainer.lr"])
        assert abs(i - j) == 1 or i == j in (0, len(LRS) - 1), (i, j)
        g_run = next((Path(home) / "runs").glob(f"pbt-test-*-{t}-sft-g{gen}"))
        saved = sorted(int(p.name.split("_")[1]) for p in g_run.glob("checkpoint_0*"))
        assert saved and min(saved) > step and max(saved) == STEPS, (saved, step)
