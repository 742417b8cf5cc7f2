"""Weight-sync payloads: buckets round-trip without copies, bad weights are refused before commit."""

import json

import numpy as np
import pytest
import torch

from tunefleet.rollout.samples import SyncError
from tunefleet.rollout.sync import (
    AdapterPayload,
    _finite,
    adapter_from_dir,
    adapter_from_peft,
    check_adapter,
    check_full_weights,
    checkpoint_shapes,
    hf_names,
    pack_buckets,
    parse_bucket,
    write_adapter,
)


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(300, 100, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
            "c": torch.arange(5), "d": torch.randn(200, 100, generator=g)}


def test_buckets_round_trip_all_dtypes_and_respect_the_size_limit():
    w = _weights()
    buckets = pack_buckets(w, bucket_mb=0.1)  # a: 120 kB gets its own bucket
    assert len(buckets) >= 2 and all(b.dtype == np.uint8 for b in buckets)
    got = dict(p for b in buckets for p in parse_bucket(b))
    assert set(got) == set(w)
    for k in w:
        assert got[k].dtype == w[k].dtype and torch.equal(got[k], w[k])


def test_parse_bucket_views_the_buffer_without_copying():
    blob = pack_buckets({"x": torch.ones(4, 4)}, bucket_mb=1)[0]
    blob.flags.writeable = False  # as the object store hands it out
    (name, t), = parse_bucket(blob)
    assert name == "x" and t.shape == (4, 4)
    start = blob.ctypes.data
    assert start <= t.data_ptr() < start + blob.size


def test_tied_weights_are_sent_once_and_trainer_prefix_is_stripped():
    emb = torch.randn(10, 4)
    w = hf_names({"lm.model.embed_tokens.weight": emb, "lm.lm_head.weight": emb, "lm.norm": torch.ones(4)})
    assert set(w) == {"model.embed_tokens.weight", "lm_head.weight", "norm"}
    names = [n for b in pack_buckets(w, 1) for n, _ in parse_bucket(b)]
    assert names == ["model.embed_tokens.weight", "norm"]


def test_check_full_weights_refuses_what_does_not_fit(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 3), "v": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    shapes = checkpoint_shapes(tmp_path)
    assert shapes == {"w": (2, 3), "v": (3,)}
    check_full_weights([("w", torch.ones(2, 3)), ("v", torch.ones(3))], shapes)
    with pytest.raises(SyncError, match="unknown weight"):
        check_full_weights([("w", torch.ones(2, 3)), ("v", torch.ones(3)), ("u", torch.ones(1))], shapes)
    with pytest.raises(SyncError, match="shape"):
        check_full_weights([("w", torch.ones(3, 2)), ("v", torch.ones(3))], shapes)
    with pytest.raises(SyncError, match="missing"):
        check_full_weights([("w", torch.ones(2, 3))], shapes)
    with pytest.raises(SyncError, match="non-finite"):
        check_full_weights([("w", torch.full((2, 3), float("nan"))), ("v", torch.ones(3))], shapes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finiteness_check_finds_nan_and_inf_without_false_alarms(dtype):
    big = torch.full((100_000,), 60_000.0, dtype=dtype)  # sums far past float16's 65504
    assert _finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = big.clone()
        t[12_345] = bad
        assert not _finite(t)


def test_adapter_payload_from_peft_round_trips_through_a_directory(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunefleet.models.lora import apply_lora, save_adapter

    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1)
    peft = apply_lora(LlamaForCausalLM(cfg), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    payload = adapter_from_peft(peft)
    assert payload.rank == 4 and sorted(payload.config["target_modules"]) == sorted(
        peft.peft_config["default"].target_modules)
    json.dumps(payload.config)  # JSON-safe
    check_adapter(payload, max_rank=8)
    with pytest.raises(SyncError, match="rank"):
        check_adapter(payload, max_rank=2)
    # What vLLM reads equals what PEFT itself saves.
    ours = dict(parse_bucket(adapter_from_dir(write_adapter(payload, tmp_path / "ours")).weights))
    theirs = dict(parse_bucket(adapter_from_dir(save_adapter(peft, tmp_path / "peft")).weights))
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_check_adapter_refuses_non_lora_weights():
    blob = pack_buckets({"model.embed_tokens.weight": torch.ones(2, 2)}, 1)[0]
    with pytest.raises(SyncError, match="LoRA"):
        check_adapter(AdapterPayload({"r": 4}, blob), max_rank=8)


def test_buckets_are_valid_safetensors_and_cast_floats_only():
    from safetensors.torch import load as st_load

    w = _weights()
    blobs = pack_buckets(w, bucket_mb=1, dtype=torch.bfloat16)
    loaded = {k: v for b in blobs for k, v in st_load(b.tobytes()).items()}
    assert loaded["a"].dtype == torch.bfloat16 and torch.equal(loaded["a"], w["a"].to(torch.bfloat16))
    assert loaded["c"].dtype == torch.int64 and torch.equal(loaded["c"], w["c"])


def test_pack_reuses_buffers_of_the_same_layout():
    w = _weights()
    first = pack_buckets(w, bucket_mb=0.1)
    w2 = {k: v + 1 if v.is_floating_point() else v for k, v in w.items()}
    second = pack_buckets(w2, bucket_mb=0.1, reuse=first)
    assert all(a is b for a, b in zip(first, second))
    got = dict(p for b in second for p in parse_bucket(b))
    assert torch.equal(got["a"], w2["a"])
    third = pack_buckets({"z": torch.ones(3)}, bucket_mb=0.1, reuse=second)
    assert third[0] is not second[0]
