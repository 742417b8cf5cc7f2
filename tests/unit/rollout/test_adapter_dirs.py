"""An engine serving LoRA syncs keeps only the served adapter directory and the one staged
next, however long the run; the pool's shutdown deletes the rest. (A fake vLLM: the engine's
own stage/commit/abort code runs, nothing is generated.)"""

from types import SimpleNamespace

import torch

from tunefleet.config.rollout import RolloutConfig
from tunefleet.rollout.adapter_dirs import AdapterDirs
from tunefleet.rollout.engine import VLLMEngine
from tunefleet.rollout.sync import AdapterPayload, pack_buckets


class FakeLLM:
    def __init__(self):
        self.loaded = {}
        self.llm_engine = SimpleNamespace(add_lora=lambda r: self.loaded.__setitem__(r.lora_int_id, r.lora_path),
                                          remove_lora=lambda i: self.loaded.pop(i))

    def reset_prefix_cache(self):
        pass


def _engine(workdir):
    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM: only the sync bookkeeping runs
    engine.cfg, engine.index = RolloutConfig(enable_lora=True, max_lora_rank=8), 0
    engine.incarnation, engine.node_id = "first", "node"
    engine.version = engine.base_version = engine.lora_version = 0
    engine.lora, engine._staged, engine._faults = None, None, set()
    engine._workdir, engine._adapters, engine.llm = workdir, AdapterDirs(workdir), FakeLLM()
    engine._on_vllm_thread = lambda fn, *args, **kwargs: fn(*args, **kwargs)
    return engine


def _payload(value: float) -> AdapterPayload:
    return AdapterPayload({"r": 4}, pack_buckets({"q_proj.lora_A.weight": torch.full((4, 8), value)}, 1)[0])


def test_fifty_lora_syncs_leave_two_adapter_dirs_and_shutdown_none(tmp_path):
    engine = _engine(tmp_path / "engine0")
    engine._workdir.mkdir()
    for v in range(1, 51):
        engine.stage_lora(_payload(v), v)
        assert len(list(engine._workdir.iterdir())) <= 2  # the served one and the staged one
        if v % 10 == 7:  # an aborted sync: its staged dir goes at the next commit
            engine.abort()
            continue
        engine.commit(v)
        assert [p.name for p in engine._workdir.iterdir()] == [f"lora-v{v}"]
        assert engine.llm.loaded == {v: str(engine._workdir / f"lora-v{v}")}
    engine.stage_lora(_payload(51.0), 51)
    assert sorted(p.name for p in engine._workdir.iterdir()) == ["lora-v50", "lora-v51"]
    engine.close()
    assert not engine._workdir.exists()
