"""Driver side: build the Ray Train TorchTrainer for a config and run it."""

from __future__ import annotations

import os
from contextlib import contextmanager

from tunefleet.config import Config


def _use_gpu(cfg: Config) -> bool:
    import ray

    if cfg.trainer.device == "cuda":
        return True
    return cfg.trainer.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0


@contextmanager
def ray_train_env(elastic: bool):
    """Around `fit()`: Ray Train settings it reads from the driver's environment and hands
    to its controller. A user's own values win; the process environment is restored after."""
    wanted = {
        # See node drains (preemption notices) within 2 s, not 5, leaving most of the
        # notice period for the just-in-time checkpoint (train/loop.py).
        "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "2",
    }
    if elastic:
        # An elastic group only starts at a size the cluster reports ready, so a placement
        # group not up within 10 s means that view was stale (a node has just gone): fail
        # fast and retry at the size now available, instead of Ray's default 60 s wait.
        wanted["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def build_trainer(cfg: Config, loop_config: dict, name: str, storage: str, callbacks: list | None = None):
    """TorchTrainer with `trainer.num_workers` workers, a count or an elastic [min, max]
    range of which it takes only the sizes the batch divides (gloo on CPU, NCCL on GPU).
    Rerunning with the same `name` and `storage` resumes from the newest checkpoint.
    `callbacks`: Ray Train UserCallbacks (a campaign trial's TuneReportCallback)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from tunefleet.storage import ray_storage
    from tunefleet.train.elastic import SizedTorchTrainer
    from tunefleet.train.loop import train_loop_per_worker

    gpu = _use_gpu(cfg)
    t = cfg.trainer
    workers = (t.min_workers, t.max_workers) if t.elastic else t.max_workers
    scaling = ScalingConfig(num_workers=workers, use_gpu=gpu,
                            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if gpu else {})},
                            **({"elastic_resize_monitor_interval_s": t.resize_check_s} if t.elastic else {}))
    # An s3:// storage goes to Ray as our configured filesystem (endpoint from the env, see
    # tunefleet/storage.py), so Ray Train and our own readers see the same objects.
    path, filesystem = ray_storage(storage)
    run = RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=filesystem,
        # A killed worker can surface as a controller error (ActorUnavailableError) before its
        # health check fails: give those the same retry budget as worker failures.
        failure_config=FailureConfig(max_failures=t.max_failures, controller_failure_limit=t.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
        callbacks=callbacks or None,
    )
    return SizedTorchTrainer(train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling,
                             run_config=run, torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
                             world_sizes=t.world_sizes)
