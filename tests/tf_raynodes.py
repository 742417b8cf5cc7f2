"""Real `ray start` nodes on 127.0.0.1 for integration tests: a head, extra worker nodes
joining it, and removing one of them again (as a preempted or scaled-down node would)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """A head node started with `ray start --head`; `gcs` is what `ray start --address` and
    RAY_ADDRESS take, `dashboard` what `ray job submit --address` takes."""

    gcs: str
    dashboard: str
    env: dict
    temp: str

    def add_node(self, num_cpus: int) -> int:
        """`ray start --address` a worker node; returns its node-manager port (its handle)."""
        port = free_port()
        cmd = [str(BIN / "ray"), "start", "--address", self.gcs, "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(num_cpus), "--node-manager-port", str(port), "--node-name", f"tf-node-{port}",
               *_own_ports(head=False)]
        subprocess.run(cmd, check=True, env=self.env, capture_output=True, timeout=120)
        return port

    def node_id(self, port: int) -> str:
        out = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", self.dashboard, "--format", "json",
                              "--detail"], env=self.env, capture_output=True, text=True, check=True, timeout=60)
        [node] = [n for n in json.loads(out.stdout) if n["node_name"] == f"tf-node-{port}" and n["state"] == "ALIVE"]
        return node["node_id"]

    def drain_node(self, port: int, deadline_s: int) -> None:
        """Announce the node's preemption (what KubeRay / the autoscaler / a spot reclaim
        do through the GCS drain API); the node keeps running until `remove_node`."""
        cmd = [str(BIN / "ray"), "drain-node", "--address", self.gcs, "--node-id", self.node_id(port),
               "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "test preemption",
               "--deadline-remaining-seconds", str(deadline_s)]
        subprocess.run(cmd, env=self.env, capture_output=True, check=True, timeout=60)

    def remove_node(self, port: int) -> None:
        """SIGTERM the node's raylet (what stopping Ray on that machine does): the node leaves
        the cluster and the workers on it die."""
        import psutil

        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "raylet" and f"--node_manager_port={port}" in (proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGTERM)
                return
        raise LookupError(f"no raylet with node manager port {port}")

    def processes(self) -> list:
        """Every live process of this cluster, and only of this one: the processes whose
        command line names its temp dir (GCS, raylets of every node, dashboard, monitors) or
        its GCS port (the client server), and all their descendants (workers, agents)."""
        import psutil

        on_gcs = re.compile(rf"--(gcs-)?address=\S+:{self.gcs.rsplit(':', 1)[1]}(\s|$)")
        roots = []
        for proc in psutil.process_iter(["cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if self.temp in line or on_gcs.search(line):
                roots.append(proc)
        found = {p.pid: p for p in roots}
        for proc in roots:
            try:
                found.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def stop(self) -> None:
        """Stop this cluster's processes only (never the `ray` CLI's stop, which ends every Ray
        instance on the machine, another user's included): SIGTERM, then SIGKILL after 15 s."""
        import psutil

        procs = self.processes()
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        if not os.environ.get("TF_KEEP_RAY_TEMP"):  # set it to read Ray's logs after a failure
            shutil.rmtree(self.temp, ignore_errors=True)


def _own_ports(head: bool) -> list[str]:
    """Free ports for what Ray otherwise binds at fixed defaults: with another Ray instance
    on the machine (a user's demo, a second test run), a node's dashboard agent could not
    bind 52365 and the cluster took no job ("No available agent to submit job"); the
    head's client server would likewise collide on 10001."""
    ports = ["--dashboard-agent-listen-port", str(free_port())]
    return ports + ["--ray-client-server-port", str(free_port())] if head else ports


def start_head(num_cpus: int) -> LocalCluster:
    """`ray start --head` on loopback with the dashboard (Ray Train's controller needs it)."""
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp = tempfile.mkdtemp(prefix="tfray", dir="/tmp")
    port, dash = free_port(), free_port()
    # Token auth as on a real cluster; the token travels in the environment (not ~/.ray).
    # Without RAY_ADDRESS: a cluster this process is connected to must not leak into this one's env.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)}
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", str(num_cpus),
           "--temp-dir", temp, *_own_ports(head=True)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    return LocalCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env, temp)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    """Poll `predicate()` until it returns something truthy; fail naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
