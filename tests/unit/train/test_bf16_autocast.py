"""trainer.bf16 on a CPU without native bf16 runs fp32: emulated bf16 made the demo's
SmolLM2 LoRA step 171 s instead of ~15 s on the 2-core AVX2 machine."""

import torch

from tunefleet.train.step import autocast_bf16


def test_bf16_autocast_only_where_the_cpu_has_it(monkeypatch, capsys):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert autocast_bf16(True, "cpu") is False
    assert "no native bf16" in capsys.readouterr().out
    assert autocast_bf16(False, "cpu") is False
    assert autocast_bf16(True, "cuda") is True  # GPUs decide for themselves
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert autocast_bf16(True, "cpu") is True
