"""Offline generation: a prompt dataset through the pool into a Parquet file, logged to
MLflow as a dataset with lineage (which run's model, which policy version). Self-play uses it.

One Parquet row per prompt:
  prompt (str, or the token ids as text), prompt_token_ids list<int32> [P],
  samples list<str> [n], token_ids list<list<int32>> [n][T_i], logprobs list<list<float32>> [n][T_i],
  finish_reasons list<str> [n], version int64, sampling str (JSON).
The logprobs are those of the distribution sampled from (temperature, top-p/top-k applied; see Sample).
The file's schema metadata repeats the sampling config, the model and the versions seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tunefleet.rollout.samples import Prompt, Rollout, Sampling

SCHEMA = pa.schema([
    ("prompt", pa.string()),
    ("prompt_token_ids", pa.list_(pa.int32())),
    ("samples", pa.list_(pa.string())),
    ("token_ids", pa.list_(pa.list_(pa.int32()))),
    ("logprobs", pa.list_(pa.list_(pa.float32()))),
    ("finish_reasons", pa.list_(pa.string())),
    ("version", pa.int64()),
    ("sampling", pa.string()),
])


@dataclass(frozen=True)
class OfflineResult:
    """Where the dataset went and what it holds (`digest`: sha256 of the file)."""

    path: Path
    rows: int
    digest: str
    versions: tuple[int, ...]


def read_prompts(path: str | Path, field: str = "prompt") -> list[str]:
    """The `field` of every row of a JSONL / JSON / Parquet file."""
    from tunefleet.data.readers import read_rows

    result = read_rows(path, validate=lambda r: None if isinstance(r.get(field), str) else f"no string {field!r}")
    return [r[field] for r in result.rows]


def rollouts_to_table(rollouts: list[Rollout], model: str = "", texts: list[str] | None = None) -> pa.Table:
    """Rollouts -> a table in SCHEMA, in the order given. `texts`: the prompts as people
    read them, when the pool was given token ids (e.g. chat-templated prompts)."""
    shown = texts or [r.prompt if isinstance(r.prompt, str) else json.dumps(r.prompt) for r in rollouts]
    rows = [{
        "prompt": text,
        "prompt_token_ids": r.prompt_token_ids,
        "samples": [s.text for s in r.samples],
        "token_ids": [s.token_ids for s in r.samples],
        "logprobs": [s.logprobs for s in r.samples],
        "finish_reasons": [s.finish_reason for s in r.samples],
        "version": r.version,
        "sampling": r.sampling.to_json(),
    } for r, text in zip(rollouts, shown)]
    versions = sorted({r.version for r in rollouts})
    meta = {"tunefleet.model": model, "tunefleet.policy_versions": json.dumps(versions),
            "tunefleet.sampling": rollouts[0].sampling.to_json() if rollouts else "{}"}
    return pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(meta))


def write_parquet(table: pa.Table, out: str | Path) -> str:
    """Write atomically (temp file + rename); returns the file's sha256."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def generate_dataset(pool, prompts: list[Prompt] | str | Path, out: str | Path, sampling: Sampling, *,
                     prompt_field: str = "prompt", model: str = "", tracker=None,
                     source_run_id: str | None = None, name: str = "rollouts",
                     texts: list[str] | None = None) -> OfflineResult:
    """Generate `sampling.n` samples per prompt with the pool and write them to `out`.

    `prompts`: a list, or a JSONL/JSON/Parquet file whose `prompt_field` holds them. With a
    `tracker` (driver side), the file is logged as MLflow dataset `name` with lineage tags
    `dataset.<name>.source_run_id` (the run whose model generated it) and
    `dataset.<name>.policy_version`. `texts`: readable prompts for the `prompt` column when
    `prompts` are token ids.
    """
    import ray

    prompt_list = read_prompts(prompts, prompt_field) if isinstance(prompts, (str, Path)) else list(prompts)
    rollouts = ray.get(pool.generate.remote(prompt_list, sampling))
    table = rollouts_to_table(rollouts, model=model, texts=texts)
    digest = write_parquet(table, out)
    result = OfflineResult(Path(out), table.num_rows, digest, tuple(sorted({r.version for r in rollouts})))
    if tracker is not None:
        log_lineage(tracker, result, name, source_run_id, model, sampling)
    return result


def log_lineage(tracker, result: OfflineResult, name: str, source_run_id: str | None, model: str,
                sampling: Sampling) -> None:
    """Log the file as an MLflow dataset and tag where it came from."""
    tracker.log_dataset(name, result.digest, result.rows, str(Path(result.path).resolve()))
    tracker.set_tags({
        f"dataset.{name}.source_run_id": source_run_id or "",
        f"dataset.{name}.policy_version": ",".join(str(v) for v in result.versions),
        f"dataset.{name}.model": model,
        f"dataset.{name}.sampling": sampling.to_json(),
    })
