"""The kustomize manifests in k8s/, rendered and validated offline (issue #18: manifests).

Each rule is a function in k8s_checks.py that returns its problems: the real renders must give [],
and a mutated copy must not (a check that cannot fail proves nothing).
"""

import shlex

import k8s_checks as kc
import pytest

pytestmark = pytest.mark.skipif(kc.kubectl_missing(), reason="kubectl (with kustomize) is not on PATH")
needs_crds = pytest.mark.skipif(not kc.CRD_DIR.is_dir(), reason=f"KubeRay CRDs not found at {kc.CRD_DIR}")
RAY_PIN = kc.pyproject_pins()["ray"]
PLATFORM_KINDS = {"ConfigMap", "Service", "StatefulSet", "Deployment", "RayCluster", "PodMonitor"}


def objects(rel_dir: str, kind: str) -> list[dict]:
    return [o for o in kc.fresh(rel_dir) if o["kind"] == kind]


@pytest.mark.parametrize("rel_dir", kc.RENDER_DIRS)
def test_every_directory_renders(rel_dir):
    kinds = {o["kind"] for o in kc.render(rel_dir)}
    assert kinds == ({"RayJob"} if rel_dir.endswith("jobs") else PLATFORM_KINDS)


@needs_crds
@pytest.mark.parametrize("rel_dir", kc.RENDER_DIRS)
def test_every_render_passes_every_check(rel_dir):
    """CRD schemas (strict), kubernetes-validate (strict), pod/container, Ray, RayJob and secret rules."""
    assert kc.all_problems(kc.render(rel_dir), RAY_PIN) == []


@pytest.mark.parametrize("overlay", kc.OVERLAYS)
def test_rayjob_clusters_are_copies_of_the_raycluster(overlay):
    """Each RayJob carries its own cluster (so shutdownAfterJobFinishes frees it): the copy, after the
    overlay's patches, must stay the shared RayCluster's spec."""
    platform, jobs = kc.OVERLAYS[overlay]
    (cluster,) = objects(platform, "RayCluster")
    for job in objects(jobs, "RayJob"):
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], kc.name(job)


def test_cpu_dev_overlay_fits_a_laptop():
    objs = kc.fresh("overlays/cpu-dev") + kc.fresh("overlays/cpu-dev/jobs")
    images = {c["image"]: c.get("imagePullPolicy") for o in objs for _, s in kc.pod_specs(o) for c in s["containers"]}
    assert images == {"tunefleet-cpu:dev": "IfNotPresent", "postgres:16": "IfNotPresent"}
    for obj in objs:
        cluster = kc.ray_cluster_spec(obj)
        if cluster:
            cpu, gpu = cluster["workerGroupSpecs"]
            assert (cpu["minReplicas"], cpu["replicas"], cpu["maxReplicas"]) == (1, 1, 2)
            assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (0, 0, 0)


def test_gpu_overlay_puts_gpu_workers_on_gpu_nodes():
    objs = kc.fresh("overlays/gpu") + kc.fresh("overlays/gpu/jobs")
    images = {c["image"] for o in objs for _, s in kc.pod_specs(o) for c in s["containers"]}
    assert images == {"tunefleet-gpu:0.1.0", "postgres:16"}
    for obj in objs:
        cluster = kc.ray_cluster_spec(obj)
        if cluster:
            gpu = cluster["workerGroupSpecs"][1]
            assert gpu["groupName"] == "gpu" and gpu["maxReplicas"] > 0
            assert gpu["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_mlflow_tracking_uri_is_the_mlflow_service():
    """Drivers reach MLflow by the Service that mlflow.yaml defines, on its port."""
    import yaml

    (config,) = objects("base", "ConfigMap")
    (svc,) = [o for o in objects("base", "Service") if o["metadata"]["name"] == "tunefleet-mlflow"]
    uri = f"http://tunefleet-mlflow:{svc['spec']['ports'][0]['port']}"
    assert config["data"]["MLFLOW_TRACKING_URI"] == uri
    for job in objects("base/jobs", "RayJob"):
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"] == uri


def entrypoint_cli_args(entrypoint: str, env: dict[str, str]) -> list[str]:
    """`tunefleet validate` arguments for a RayJob entrypoint (image paths mapped to this checkout)."""
    argv = [a.replace("/app/", "").replace("$TUNEFLEET_RUN_STORAGE", env["TUNEFLEET_RUN_STORAGE"])
            for a in shlex.split(entrypoint)]
    assert argv[0] == "python", entrypoint
    if argv[1] == "jobs/run.py":
        return ["validate", *argv[2:]]
    assert argv[1:4] == ["-m", "tunefleet.cli.main", "sweep"], entrypoint
    return ["validate", *argv[4:]]


@pytest.mark.parametrize("job", ["run", "sweep", "selfplay"])
def test_rayjob_entrypoints_name_valid_configs(job, capsys):
    """The config (or campaign) and overrides each RayJob runs pass `tunefleet validate`."""
    from tunefleet.cli.main import main

    (config,) = objects("base", "ConfigMap")
    (rayjob,) = [o for o in objects("base/jobs", "RayJob") if o["metadata"]["name"] == f"tunefleet-{job}"]
    args = entrypoint_cli_args(rayjob["spec"]["entrypoint"], config["data"])
    assert main(args) == 0, capsys.readouterr()


# --- the checks can fail ----------------------------------------------------------------------


def cluster_of(rel_dir: str, kind: str) -> tuple[dict, dict]:
    obj = objects(rel_dir, kind)[0]
    return obj, kc.ray_cluster_spec(obj)


@needs_crds
@pytest.mark.parametrize("kind,rel_dir", [("RayCluster", "base"), ("RayJob", "base/jobs")])
def test_crd_check_rejects_typod_fields(kind, rel_dir):
    obj, cluster = cluster_of(rel_dir, kind)
    assert kc.crd_problems(obj) == []
    head = cluster["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    assert any("rayStartParam" in p for p in kc.crd_problems(obj))
    obj, cluster = cluster_of(rel_dir, kind)
    group = cluster["workerGroupSpecs"][0]
    group["replica"] = group.pop("replicas")
    assert any("replica" in p for p in kc.crd_problems(obj))
    obj, _ = cluster_of(rel_dir, kind)
    obj["spec"]["rayVersion" if kind == "RayCluster" else "backoffLimit"] = 2.6  # wrong type
    assert kc.crd_problems(obj)


@needs_crds
def test_crd_check_rejects_typos_inside_pod_templates():
    """The embedded PodSpec is strict too: an unknown container field is an error, not pruned."""
    obj, cluster = cluster_of("base", "RayCluster")
    container = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    assert any("volumeMount" in p for p in kc.crd_problems(obj))


def test_pod_check_flags_missing_limits_security_and_shm():
    obj, cluster = cluster_of("base", "RayCluster")
    assert kc.pod_problems(obj) == []
    del cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert any("group cpu" in p and "limits" in p for p in kc.pod_problems(obj))
    obj, cluster = cluster_of("base", "RayCluster")
    cluster["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] = True
    assert any("autoscalerOptions" in p for p in kc.pod_problems(obj))
    (pg,) = objects("base", "StatefulSet")
    pg["spec"]["template"]["spec"]["volumes"][0]["emptyDir"].pop("medium")
    assert any("/dev/shm" in p for p in kc.pod_problems(pg))
    (job,) = [o for o in objects("base/jobs", "RayJob") if o["metadata"]["name"] == "tunefleet-run"]
    del job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]
    assert any("submitter" in p for p in kc.pod_problems(job))


def test_ray_check_flags_version_head_cpus_and_sizes():
    obj, cluster = cluster_of("base", "RayCluster")
    assert kc.ray_problems(obj, RAY_PIN) == []
    cluster["rayVersion"] = "2.59.0"
    assert any("rayVersion" in p for p in kc.ray_problems(obj, RAY_PIN))
    obj, cluster = cluster_of("base/jobs", "RayJob")
    cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] = "4"
    cluster["workerGroupSpecs"][0]["replicas"] = 99
    problems = kc.ray_problems(obj, RAY_PIN)
    assert any("num-cpus" in p for p in problems) and any("min/replicas/max" in p for p in problems)


def test_rayjob_check_flags_missing_cleanup_and_bad_runtime_env():
    (job,) = objects("base/jobs", "RayJob")[:1]
    assert kc.rayjob_problems(job) == []
    del job["spec"]["ttlSecondsAfterFinished"]
    job["spec"]["shutdownAfterJobFinishes"] = False
    job["spec"]["runtimeEnvYAML"] = "env_vars: [unclosed"
    problems = kc.rayjob_problems(job)
    assert len(problems) == 3, problems


def test_core_check_rejects_a_typo_in_a_deployment():
    (deploy,) = objects("base", "Deployment")
    assert kc.core_problems(deploy) == []
    deploy["spec"]["replica"] = deploy["spec"].pop("replicas")
    assert any("replica" in p for p in kc.core_problems(deploy))
    (deploy,) = objects("base", "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert kc.core_problems(deploy)


def test_secret_check_flags_values_in_the_repo():
    (deploy,) = objects("base", "Deployment")
    assert kc.secret_problems(deploy) == []
    deploy["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY",
                                                                       "value": "hunter2"})
    assert kc.secret_problems(deploy)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert kc.secret_problems(secret)


def test_podmonitor_check_flags_a_wrong_port():
    (monitor,) = objects("base", "PodMonitor")
    assert kc.podmonitor_problems(monitor) == []
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = "http"
    assert kc.podmonitor_problems(monitor)
