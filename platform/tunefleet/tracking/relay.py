"""Rank 0's MLflow records, relayed through the driver.

Only the driver talks to MLflow. On a cluster the training workers run on other nodes: a
`sqlite:///` or `file:` tracking URI there would be a file on the worker's disk, which the
driver never sees, and a tracking server may not even be reachable from the workers. So
rank 0 logs into a `RelayTracker`, which pushes each record (step metrics with their
timestamps, small artifact files such as rollout samples) to the run's control actor
(train/control.py, already on the cluster); the driver's `relay_records` thread takes them
about once a second and logs them through its own `Tracker` (which buffers through a
tracking outage). Ray delivers one caller's calls to an actor in order, so steps arrive in
the order rank 0 logged them.
"""

from __future__ import annotations

import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RelayTracker:
    """The part of `Tracker` that rank 0 uses; records go to `control` (a RunControl actor)."""

    def __init__(self, control, run_id: str):
        self.control, self.run_id = control, run_id
        self._last = None  # the newest push, awaited by flush()

    def _push(self, record: tuple) -> None:
        self._last = self.control.push.remote([record])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {}
        for k, v in metrics.items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                continue  # the driver's Tracker would skip it too
        self._push(("metrics", values, int(step), int(time.time() * 1000)))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """A small file (it travels through the object store), logged under `artifact_path`."""
        path = Path(local_path)
        self._push(("file", path.read_bytes(), path.name, artifact_path))

    def flush(self) -> None:
        """Wait until every record pushed so far is with the control actor."""
        import ray

        if self._last is not None:
            ray.get(self._last, timeout=120)


def apply(tracker, record: tuple, folder: Path) -> None:
    """Log one relayed record through the driver's `tracker`."""
    kind = record[0]
    if kind == "metrics":
        _, metrics, step, ts = record
        tracker.log_metrics(metrics, step=step, timestamp_ms=ts)
    elif kind == "file":
        _, data, name, artifact_path = record
        # Kept until the run ends: during an outage the tracker uploads the file when it replays.
        target = folder / (artifact_path or ".") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        tracker.log_artifact(str(target), artifact_path)
    else:
        raise ValueError(f"unknown relayed record kind {kind!r}")


@contextmanager
def relay_records(tracker, control, every_s: float = 1.0) -> Iterator[None]:
    """While the block runs (the fit), log what rank 0 pushes to `control`; at the end, the rest."""
    import ray

    if getattr(tracker, "run_id", None) is None:  # tracking disabled: workers push nothing
        yield
        return
    folder = Path(tempfile.gettempdir()) / f"tunefleet-relay-{tracker.run_id}"
    stop = threading.Event()

    def drain() -> None:
        for record in ray.get(control.take.remote(), timeout=120):
            apply(tracker, record, folder)

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                drain()
            except Exception as err:  # noqa: BLE001 - a relay hiccup must not end training
                warnings.warn(f"relaying rank 0's MLflow records failed (retrying): {err}", stacklevel=1)

    thread = threading.Thread(target=loop, name="tunefleet-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            drain()
        except Exception as err:  # noqa: BLE001 - the fit's own outcome matters more
            warnings.warn(f"the last of rank 0's MLflow records could not be relayed: {err}", stacklevel=1)
