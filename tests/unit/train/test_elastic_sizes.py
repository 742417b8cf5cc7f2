"""Elastic groups take only world sizes the global batch divides (no cluster needed)."""

import pytest

from tunefleet.config import ConfigError, TrainerConfig, load_config


def _trainer(workers, batch=16, micro=4):
    return TrainerConfig(num_workers=workers, batch_size=batch, micro_batch_size=micro)


def test_world_sizes_are_the_divisors_in_range():
    """batch 16, micro 4: 16 / (w * 4) whole for w = 1, 2, 4, not 3."""
    assert _trainer((1, 4)).world_sizes == (1, 2, 4)
    assert _trainer((2, 8), batch=48, micro=2).world_sizes == (2, 3, 4, 6, 8)  # 24 sequences a worker-step
    assert _trainer(2).world_sizes == (2,)


@pytest.mark.parametrize("available,chosen", [(0, 0), (1, 1), (2, 2), (3, 2), (4, 4), (9, 4)])
def test_usable_world_size_rounds_down_to_a_divisor(available, chosen):
    assert _trainer((1, 4)).usable_world_size(available) == chosen


def test_below_the_smallest_size_is_zero():
    assert _trainer((2, 4)).usable_world_size(1) == 0


def test_range_ends_must_divide(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: tiny-llama}\ndata: {task: arith}\n"
                   "trainer: {batch_size: 16, micro_batch_size: 4}\n")
    assert load_config(cfg, ["trainer.num_workers=[1, 4]"]).trainer.world_sizes == (1, 2, 4)
    for workers, bad in (("[3, 4]", 3), ("[1, 3]", 3), ("[2, 5]", 5)):
        with pytest.raises(ConfigError) as info:
            load_config(cfg, [f"trainer.num_workers={workers}"])
        assert "trainer.batch_size" in str(info.value) and f"{bad} * 4" in str(info.value)


def test_scaling_policy_starts_and_resizes_only_at_divisors():
    """Ray's elastic policy counts the workers the reserved resources fit; ours rounds that
    down to a usable size, so a group never starts at a size the batch does not divide."""
    from ray.train import ScalingConfig

    from tunefleet.train.elastic import DivisorScalingPolicy

    policy = DivisorScalingPolicy(ScalingConfig(num_workers=(1, 4), resources_per_worker={"CPU": 1}), (1, 2, 4))
    assert policy._count_possible_workers({"a": {"CPU": 3.0}}) == 2
    assert policy._count_possible_workers({"a": {"CPU": 2.0}, "b": {"CPU": 2.5}}) == 4
    assert policy._count_possible_workers({"a": {"CPU": 1.0}}) == 1
    assert policy._count_possible_workers({"a": {"CPU": 0.5}}) == 0  # < min: Ray waits (NoopDecision)
    assert policy._get_num_workers_for_resource_request() == 4


def test_build_trainer_hands_the_controller_our_policy(monkeypatch, tmp_path):
    from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy, FixedScalingPolicy
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from tunefleet.train.elastic import DivisorScalingPolicy
    from tunefleet.train.trainer import build_trainer

    seen = {}
    monkeypatch.setattr(DataParallelTrainer, "_initialize_and_run_controller", lambda self, **kw: seen.update(kw))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: tiny-llama}\ndata: {task: arith}\n"
                   "trainer: {batch_size: 16, micro_batch_size: 4, device: cpu, num_workers: [1, 4]}\n")
    trainer = build_trainer(load_config(cfg), {}, "n", str(tmp_path))
    trainer._initialize_and_run_controller(scaling_policy=ElasticScalingPolicy(trainer.scaling_config), x=1)
    assert isinstance(seen["scaling_policy"], DivisorScalingPolicy) and seen["x"] == 1
    assert seen["scaling_policy"].sizes == (1, 2, 4)
    fixed = build_trainer(load_config(cfg, ["trainer.num_workers=2"]), {}, "n", str(tmp_path))
    fixed._initialize_and_run_controller(scaling_policy=FixedScalingPolicy(fixed.scaling_config))
    assert type(seen["scaling_policy"]) is FixedScalingPolicy  # a fixed group keeps Ray's own policy
