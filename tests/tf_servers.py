"""Real shared services on 127.0.0.1 for integration tests, as a cluster has them: PostgreSQL
(Debian's package), an MLflow tracking server on it, and an S3 API (moto's server) for
artifacts and run storage. Each on a free port, in a temp dir, stopped afterwards.

`services()` yields a `Services`; `skip_reason()` says why they cannot start here (the test
then skips with that reason)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tf_raynodes import free_port, wait_for

BIN = Path(sys.executable).parent
BUCKET = "tunefleet"
# moto accepts any credentials; real ones would come from a Secret (k8s/README.md).
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Services:
    tracking_uri: str  # http://127.0.0.1:PORT (MLflow server, PostgreSQL store, artifacts on S3)
    s3_endpoint: str  # http://127.0.0.1:PORT
    env: dict = field(default_factory=dict)  # what a process needs to reach them (S3 endpoint + credentials)

    def s3(self):
        """A boto3 S3 client on the test's S3 API."""
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **{k.lower(): v for k, v in S3_ENV.items()
                                                                      if k != "AWS_DEFAULT_REGION"},
                            region_name=S3_ENV["AWS_DEFAULT_REGION"])


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def skip_reason() -> str | None:
    if _pg_bin() is None:
        return "PostgreSQL is not installed (run `make system-deps`: apt-get install postgresql)"
    for tool in ("moto_server", "mlflow"):
        if not (BIN / tool).exists():
            return f"{tool} is missing from the venv (run `make setup`: the test extra)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is missing (run `make setup`: the test extra has psycopg2-binary)"
    return None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root (CI and sessions run as root): use its own user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _start_postgres(root: Path, stack: contextlib.ExitStack) -> str:
    pg = _pg_bin()
    data, sock = root / "pgdata", root / "pgsock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run(_as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "tunefleet", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    log = open(root / "postgres.log", "w")  # noqa: SIM115 - closed by the stack
    stack.callback(log.close)
    proc = subprocess.Popen(_as_postgres([str(pg / "postgres"), "-D", str(data), "-p", str(port),
                                          "-h", "127.0.0.1", "-k", str(sock)]), stdout=log, stderr=log)
    stack.callback(_stop, proc)

    def ready():
        res = subprocess.run([str(pg / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        return res.returncode == 0

    wait_for(ready, 60, f"PostgreSQL on port {port} (log: {root / 'postgres.log'})")
    subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tunefleet", "mlflow"],
                   check=True, capture_output=True, timeout=60)
    return f"postgresql+psycopg2://tunefleet@127.0.0.1:{port}/mlflow"  # SQLAlchemy 2.1 defaults to psycopg 3


def _serve(cmd: list[str], env: dict, log_path: Path, health: str, what: str, stack: contextlib.ExitStack):
    log = open(log_path, "w")  # noqa: SIM115 - closed by the stack
    stack.callback(log.close)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    stack.callback(_stop, proc)

    def up():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(up, 120, f"{what} at {health} (log: {log_path})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def services() -> Iterator[Services]:
    """PostgreSQL + S3 API + MLflow server (store in PostgreSQL, artifacts proxied to S3)."""
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="tfsrv", dir="/tmp"))  # not under pytest's 0700 tmp: postgres reads it
        stack.callback(shutil.rmtree, root, True)
        env = {**os.environ, **S3_ENV, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        db = _start_postgres(root, stack)
        s3_port = free_port()
        s3 = f"http://127.0.0.1:{s3_port}"
        _serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], env, root / "moto.log",
               f"{s3}/moto-api/", "moto S3 server", stack)
        svc = Services("", s3, {**S3_ENV, "AWS_ENDPOINT_URL_S3": s3, "MLFLOW_S3_ENDPOINT_URL": s3})
        svc.s3().create_bucket(Bucket=BUCKET)
        port = free_port()
        _serve([str(BIN / "mlflow"), "server", "--backend-store-uri", db, "--artifacts-destination",
                f"s3://{BUCKET}/mlflow", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
               {**env, **svc.env}, root / "mlflow.log", f"http://127.0.0.1:{port}/health", "MLflow server", stack)
        svc.tracking_uri = f"http://127.0.0.1:{port}"
        yield svc


def s3_keys(svc: Services, prefix: str) -> list[str]:
    """Every object key under `prefix` in the test bucket."""
    pages = svc.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]

