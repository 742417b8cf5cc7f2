"""Stopping a run cleanly: the driver (on SIGTERM, e.g. from `ray job stop` or a preempted
pod) asks the workers to stop through a tiny named actor; after the current step they
write a checkpoint and return, so `tunefleet run --resume RUN_ID` continues exactly there.

A named actor rather than a file: it works on multi-node clusters without shared storage.
It also carries rank 0's MLflow records to the driver (tracking/relay.py).
"""

from __future__ import annotations


class RunControl:
    """Wrap with `ray.remote` (see `start_control`). One per run, named `<run>-control`."""

    def __init__(self):
        self._reason: str | None = None
        self._records: list = []  # rank 0's MLflow records, until the driver takes them

    def push(self, records: list) -> None:
        """Rank 0's MLflow records (tracking/relay.py), queued for the driver."""
        self._records.extend(records)

    def take(self) -> list:
        """Every queued record, oldest first; the queue is emptied."""
        out, self._records = self._records, []
        return out

    def request_stop(self, reason: str) -> None:
        self._reason = self._reason or reason

    def stop_reason(self) -> str | None:
        """Why a stop was requested, or None."""
        return self._reason


def control_name(run_name: str) -> str:
    return f"{run_name}-control"


def start_control(run_name: str):
    """The run's control actor (created, or found when it already exists)."""
    import ray

    actor = ray.remote(RunControl).options(name=control_name(run_name), get_if_exists=True, num_cpus=0)
    return actor.remote()


def stop_requested(control, rank: int, world: int) -> str | None:
    """Collective: rank 0 asks the control actor, every rank gets the same answer."""
    import ray

    from tunefleet.train.collectives import broadcast_object

    reason = ray.get(control.stop_reason.remote()) if rank == 0 and control is not None else None
    return broadcast_object(reason, rank, world)
