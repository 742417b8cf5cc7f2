"""An engine actor's environment and core pinning, worked out without starting one."""

from tunefleet.config.rollout import RolloutConfig
from tunefleet.rollout.engine import CPU_MALLOC, engine_cores, engine_env


def test_cpu_engines_keep_freed_memory_and_gpu_engines_are_left_alone(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    cpu = engine_env(RolloutConfig(resources_per_engine=2))
    assert cpu["GLIBC_TUNABLES"] == CPU_MALLOC and "glibc.malloc.mmap_max=0" in CPU_MALLOC
    assert cpu["OMP_NUM_THREADS"] == "2" and cpu["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "GLIBC_TUNABLES" not in engine_env(RolloutConfig(gpus_per_engine=1))


def test_a_users_own_malloc_tunables_win(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert engine_env(RolloutConfig())["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4"


def test_engines_get_their_own_cores_only_when_there_are_enough():
    cfg = RolloutConfig(num_engines=2, resources_per_engine=2)
    assert engine_cores(cfg, 0, cpus=[0, 1, 2, 3]) == [0, 1] and engine_cores(cfg, 1, cpus=[0, 1, 2, 3]) == [2, 3]
    assert engine_cores(cfg, 1, cpus=[0, 1, 2]) is None  # too small: no pinning
    assert engine_cores(RolloutConfig(bind_cores=False), 0, cpus=list(range(8))) is None
    assert engine_cores(RolloutConfig(gpus_per_engine=1), 0, cpus=list(range(8))) is None


def test_engines_are_pinned_within_the_allowed_set_not_from_core_zero():
    cfg = RolloutConfig(num_engines=2, resources_per_engine=1)
    assert engine_cores(cfg, 0, cpus=[4, 6]) == [4] and engine_cores(cfg, 1, cpus=[4, 6]) == [6]
