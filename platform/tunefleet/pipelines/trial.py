"""What makes a training job one trial of a campaign (pipelines/sweep_job.py) or one
iteration of a self-play loop (pipelines/selfplay_job.py).

`run_train_job(cfg, trial=Trial(...))` is the same job as `tunefleet run`, except that its
MLflow run is a child of the campaign's run (tag `mlflow.parentRunId`, plus the trial's
tags), its TorchTrainer gets the Tune callbacks, and every eval point is also reported to
Ray Tune (`ray.train.report` on every rank: train/eval_hook.py), so a scheduler can stop it.
Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class Trial:
    """`callbacks`: Ray Train UserCallbacks for the trial's RunConfig (TuneReportCallback);
    `parent_run_id`: the campaign's MLflow run; `tags`: tunefleet.campaign, .trial_id, .method;
    `report_evals`: report each eval point to Tune (self-play iterations do not);
    `dataset_tags`: dataset name -> its MLflow input's extra tags (lineage)."""

    callbacks: tuple = ()
    parent_run_id: str | None = None
    tags: dict = field(default_factory=dict)
    report_evals: bool = True
    dataset_tags: dict = field(default_factory=dict)
    # A PBT generation: its Train run starts from another trial's checkpoint (`restore_from`,
    # a ray.train.Checkpoint) and logs into the MLflow run of `tracking_name`, the trial's first run name.
    tracking_name: str | None = None
    restore_from: object = None

    def run_tags(self) -> dict[str, str]:
        """The child run's extra MLflow tags."""
        parent = {PARENT_TAG: self.parent_run_id} if self.parent_run_id else {}
        return {**parent, **{k: str(v) for k, v in self.tags.items()}}
