"""Elastic Ray Train groups that take only the world sizes the global batch divides.

Ray Train 2.60's ElasticScalingPolicy starts (and resizes) a group at however many workers
the cluster's free resources fit, anywhere in [min, max]. Our loop needs every rank to run
the same whole number of micro-batches per step (`batch_size / (world * micro_batch_size)`),
so a size the batch does not divide cannot train. The policy below rounds Ray's count down
to the largest usable size; everything else (resource requests, monitor interval, waiting
below min) is Ray's. Ray exposes no public hook for this, so the trainer swaps the policy in
where DataParallelTrainer.fit hands it to the controller.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy

from tunefleet.config.schema import largest_fit


class DivisorScalingPolicy(ElasticScalingPolicy):
    """ElasticScalingPolicy restricted to `sizes` (TrainerConfig.world_sizes)."""

    def __init__(self, scaling_config, sizes: tuple[int, ...]):
        super().__init__(scaling_config)
        self.sizes = tuple(sorted(sizes))

    def _count_possible_workers(self, reserved_resources) -> int:
        # Below the smallest size this is 0 < min_workers, and Ray then waits (NoopDecision).
        return largest_fit(self.sizes, super()._count_possible_workers(reserved_resources))


class SizedTorchTrainer(TorchTrainer):
    """TorchTrainer whose elastic controller uses DivisorScalingPolicy over `world_sizes`."""

    def __init__(self, *args, world_sizes: tuple[int, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.world_sizes = tuple(world_sizes)

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if self.scaling_config.elasticity_enabled:
            controller_init_kwargs["scaling_policy"] = DivisorScalingPolicy(self.scaling_config, self.world_sizes)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
