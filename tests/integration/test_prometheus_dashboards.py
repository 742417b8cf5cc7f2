"""Every PromQL expression of every dashboard, against a real Prometheus scraping a real Ray
cluster that ran a tiny SFT job (failing once, retried from its checkpoint): each parses, and
each returns data (or is allow-listed with its reason). Rollout, RL and campaign series come
from a Ray actor through the same code the RolloutPool and the sweep driver use (a vLLM pool
would cost ~45 s more)."""

import importlib.util
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tf_raynodes import free_port, wait_for

from tunefleet.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = Path("/usr/bin/prometheus")
RUN = "promdash"
# Series no CPU-only cluster has (dashboards/README.md says the same).
ALLOWED_EMPTY = {
    "ray_node_gpus_utilization": "GPU nodes only",
    "ray_node_gram_used": "GPU nodes only",
}


def _queries():
    spec = importlib.util.spec_from_file_location("tf_dashboard_build", ROOT / "dashboards" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.queries()


def _get(url: str, timeout: float = 10) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:  # a bad query answers 400 with the error in the body
        return json.loads(err.read())


@pytest.fixture
def metrics_ray(home, monkeypatch):
    """A local Ray cluster of its own whose head exports metrics on a known port."""
    import ray

    from tunefleet.cluster import runtime_env

    if ray.is_initialized():
        pytest.skip("another Ray connection is open in this process; this test needs its own cluster")
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=True, _metrics_export_port=port,
             runtime_env=runtime_env(), log_to_driver=True)
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)  # the job's workers dial this one
    yield port
    ray.shutdown()


@pytest.fixture
def prometheus(metrics_ray, tmp_path):
    """Debian's Prometheus on loopback, scraping the Ray head every second."""
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} is missing (apt-get install prometheus; CI installs it)")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                   f"  - job_name: ray\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_ray}']\n")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([str(PROMETHEUS), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "Prometheus ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _emitter():
    import ray

    @ray.remote(num_cpus=0)
    class Emitter:
        """What the RolloutPool actor, RL rank 0, a campaign trial and the sweep driver emit."""

        def run(self, seconds: float) -> int:
            from tunefleet.rollout.metrics import RolloutMetrics
            from tunefleet.telemetry import campaign_status, training_metrics

            pool = RolloutMetrics(f"{RUN}-rl-rollout")
            rl = training_metrics(f"{RUN}-rl", "rl", "grpo")
            trial = training_metrics(f"{RUN}-camp-t0", "sweep", "sft")
            n, end = 0, time.time() + seconds
            while time.time() < end:
                n += 1
                for key in ("tokens_per_s", "queue_depth", "policy_version", "engines_ready"):
                    pool.set(key, n)
                for key in ("tokens_total", "engine_restarts", "requests_retried", "stale_regenerated"):
                    pool.inc(key, 3)
                pool.observe_sync(0.02 * n)
                rl.step(n, {"loss": 1.0, "reward_mean": 0.1 * n, "staleness_mean": 0.5, "staleness_max": 1.0})
                trial.update(n, loss=1.0, tokens_per_s=50.0, world_size=1)
                trial.eval_objective(0.01 * n, "eval/arith_l1/exact_match")
                campaign_status(f"{RUN}-camp", running=1, stopped=n // 3, done=n // 2)
                time.sleep(1.0)
            return n

    return Emitter.remote()


def _grafana_to_promql(expr: str) -> str:
    # What Grafana substitutes: every run (`All` is `.*`), a rate window of several scrapes.
    return expr.replace("$run", ".*").replace("$__rate_interval", "30s")


def _range(url: str, expr: str, start: float) -> dict:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": time.time(), "step": "2"})
    return _get(f"{url}/api/v1/query_range?{q}")


def test_every_dashboard_query_parses_and_returns_data(prometheus, home):
    from tunefleet.pipelines.train_job import run_train_job

    t0 = time.time()
    emitting = _emitter().run.remote(25.0)
    cfg = load_config(None, [
        "model.name=tiny-llama", "data.task=reverse", "data.num_train=16", "data.num_eval=0", "data.max_length=256",
        "trainer.batch_size=4", "trainer.micro_batch_size=2", "trainer.max_steps=3", "trainer.num_workers=1",
        "eval.before=false", "eval.after=false", "eval.suites=[arith:1]", "eval.limit=2", "eval.max_new_tokens=2",
        # one real failure retry from checkpoint_000002: the restart counter
        "checkpoint.every_steps=2", "trainer.fail_at_step=2", "trainer.max_failures=1",
        f"run.name={RUN}", f"tracking.uri=sqlite:///{home}/mlflow.db"])
    run_train_job(cfg)
    import ray

    assert ray.get(emitting) >= 5
    # Ray's agent exports a worker's values within a few seconds; wait until the last of
    # them (the final step) has been scraped.
    wait_for(lambda: _range(prometheus, f'max(ray_tunefleet_train_step{{run="{RUN}"}}) == 3', t0)["data"]["result"],
             60, "the final training step in Prometheus", poll=2)
    failures = []
    for dash, title, expr in _queries():
        promql = _grafana_to_promql(expr)
        answer = _range(prometheus, promql, t0)
        if answer.get("status") != "success":
            failures.append(f"{dash} / {title}: does not parse: {answer.get('error')} ({promql})")
        elif not answer["data"]["result"] and not any(name in expr for name in ALLOWED_EMPTY):
            failures.append(f"{dash} / {title}: no data ({promql})")
    assert not failures, "\n".join(failures)
    # The labels the dashboards filter on are on the series: the objective of the real job.
    [series] = _range(prometheus, f'max by (run, kind, method, metric) (ray_tunefleet_eval_objective{{run="{RUN}"}})',
                      t0)["data"]["result"]
    assert series["metric"] == {"run": RUN, "kind": "train", "method": "sft", "metric": "eval/arith_l1/exact_match"}
    [restarts] = _range(prometheus, f'sum(ray_tunefleet_train_restarts_total{{run="{RUN}"}})', t0)["data"]["result"]
    assert float(restarts["values"][-1][1]) == 1.0
    assert time.time() - t0 < 150
