"""Offline datasets: the Parquet layout self-play reads, and the rollout config's validation."""

import json

import pyarrow.parquet as pq
import pytest

from tunefleet.config.loader import ConfigError, build
from tunefleet.config.rollout import RolloutConfig
from tunefleet.rollout.metrics import METRIC_NAMES, RolloutMetrics
from tunefleet.rollout.offline import read_prompts, rollouts_to_table, write_parquet
from tunefleet.rollout.samples import Rollout, Sample, Sampling


def test_rollouts_become_one_row_per_prompt_with_versions_and_sampling(tmp_path):
    s = Sampling(n=2, temperature=0.7, max_tokens=3, seed=1)
    rollouts = [
        Rollout(0, "hi", [5, 6], [Sample([1, 2], "ab", [-0.5, -0.25], "length", 4),
                                  Sample([3], "c", [-1.0], "stop", 4)], 4, 0, s),
        Rollout(1, [7, 8], [7, 8], [Sample([9], "d", [-2.0], "stop", 5)] * 2, 5, 1, s),
    ]
    digest = write_parquet(rollouts_to_table(rollouts, model="m"), tmp_path / "x.parquet")
    table = pq.read_table(tmp_path / "x.parquet")
    rows = table.to_pylist()
    assert [r["prompt"] for r in rows] == ["hi", "[7, 8]"] and [r["version"] for r in rows] == [4, 5]
    assert rows[0]["token_ids"] == [[1, 2], [3]] and rows[0]["logprobs"] == [[-0.5, -0.25], [-1.0]]
    assert rows[0]["samples"] == ["ab", "c"] and rows[0]["finish_reasons"] == ["length", "stop"]
    assert json.loads(rows[1]["sampling"])["temperature"] == 0.7
    meta = table.schema.metadata
    assert meta[b"tunefleet.model"] == b"m" and json.loads(meta[b"tunefleet.policy_versions"]) == [4, 5]
    assert len(digest) == 64


def test_read_prompts_from_jsonl(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a"}\n{"prompt": "b", "x": 1}\n')
    assert read_prompts(p) == ["a", "b"]


def test_sampling_seed_is_per_request():
    assert Sampling(seed=10).request_seed(3) == 13 and Sampling().request_seed(3) is None
    with pytest.raises(ValueError):
        Sampling(n=0)


def test_rollout_config_defaults_and_validation():
    cfg = build(RolloutConfig, {"num_engines": 2}, "rollout")
    assert cfg.max_staleness == 0 and cfg.enforce_eager and cfg.dtype == "float32"
    for key, value in [("num_engines", 0), ("kv_cache_gib", 0), ("max_staleness", -1), ("name", "a b")]:
        with pytest.raises(ConfigError, match=f"rollout.{key}"):
            build(RolloutConfig, {key: value}, "rollout")
    with pytest.raises(ConfigError, match="rollout.dtype"):
        build(RolloutConfig, {"dtype": "fp8"}, "rollout")


def test_metric_names_are_prefixed_and_snapshot_is_loggable():
    assert all(n.startswith("tunefleet_") for n in METRIC_NAMES.values())
    m = RolloutMetrics("p", export=False)
    m.inc("tokens_total", 5)
    m.set("policy_version", 3)
    m.observe_sync(0.5)
    snap = m.snapshot()
    assert snap["rollout/tokens_total"] == 5 and snap["rollout/policy_version"] == 3
    assert snap["rollout/sync_seconds"] == 0.5
