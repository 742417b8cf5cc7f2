"""Reference log-probs for methods that need them (DPO family, KTO).

live:       a frozen reference on every worker. With LoRA it is the same module with the
            adapter disabled (no second copy of the weights); otherwise a frozen copy,
            sharded with FSDP2 exactly like the policy.
precompute: one pass over the dataset before training; per-sequence sums are stored on the
            rows (and as an Arrow file cached by model and data digest), so training
            needs no reference model at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tunefleet.models.policy import IGNORE
from tunefleet.train.step import run_model


def live_reference(model_dir: str, policy, device: torch.device, world: int, dtype: str,
                   bf16: bool) -> Callable[[dict], torch.Tensor]:
    """A function from collated sequences to reference per-token log-probs [B, T]."""
    if policy.is_lora:
        module = policy.module

        def ref(seqs: dict) -> torch.Tensor:
            with module.lm.disable_adapter():
                return run_model(module, seqs, device, bf16)

        return ref
    from tunefleet.models.policy import build_policy

    # The same temperature as the policy (online RL: the sampling one). KL(pi_T || ref_T) is 0
    # at step 0 and measures only what training changed; against ref at T = 1 it would also
    # count the reshaping by T itself, and push the policy to undo the sampling temperature.
    # (TRL and verl also score the reference at the rollout temperature.)
    # (With LoRA, above, the reference is the policy module itself, so this holds there too.)
    frozen = build_policy(model_dir, dtype, None, device, world, trainable=False,
                          temperature=getattr(policy.module, "temperature", 1.0))
    frozen.module.eval()
    return lambda seqs: run_model(frozen.module, seqs, device, bf16)


def _sequences(rows: list[dict]) -> list[dict]:
    """The tokenized sequences of rows, in a fixed order (pairs: chosen then rejected)."""
    out = []
    for r in rows:
        out.extend([r["chosen"], r["rejected"]] if "chosen" in r else [r])
    return out


def cache_key(model_dir: str, data_digest: str, max_length: int, dtype: str, bf16: bool = False) -> str:
    """Model identity (config + weight file sizes and mtimes) + data digest + settings."""
    d = Path(model_dir)
    weights = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in d.glob("*.safetensors"))
    ident = {"config": (d / "config.json").read_text(), "weights": weights, "data": data_digest,
             "max_length": max_length, "dtype": dtype, "bf16": bf16}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def sequence_logps(model_dir: str, seqs: list[dict], pad_id: int, dtype: str, batch_size: int,
                   bf16: bool = False) -> list[float]:
    """Sum of response-token log-probs of each tokenized sequence under the base model.
    `bf16`: the same autocast as training, so that at step 0 policy == reference exactly."""
    from tunefleet.data.tokenize import collate
    from tunefleet.models.policy import build_policy

    policy = build_policy(model_dir, dtype, None, torch.device("cpu"), 1, trainable=False)
    policy.module.eval()
    out, t0 = [], time.monotonic()
    for i in range(0, len(seqs), batch_size):
        batch = collate(seqs[i:i + batch_size], pad_id)
        logps = run_model(policy.module, batch, torch.device("cpu"), bf16)
        out.extend((logps * (batch["labels"] != IGNORE)).sum(-1).tolist())
        if (i // batch_size) % 10 == 0 or len(out) == len(seqs):
            rate = len(out) / max(time.monotonic() - t0, 1e-9)
            print(f"[reference] {len(out)}/{len(seqs)} sequences ({rate:.1f}/s, eta "
                  f"{(len(seqs) - len(out)) / max(rate, 1e-9):.0f}s)", flush=True)
    return out


def precompute_reference(rows: list[dict], model_dir: str, pad_id: int, data_digest: str, max_length: int,
                         dtype: str, batch_size: int, cache_dir: Path, bf16: bool = False) -> Path:
    """Fill `ref_seq_logps` on every sequence of `rows` (in place), from the Arrow cache
    when the same model and data were scored before. Returns the cache file."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    seqs = _sequences(rows)
    path = Path(cache_dir) / f"ref-{cache_key(model_dir, data_digest, max_length, dtype, bf16)}.arrow"
    values = None
    if path.is_file():
        with ipc.open_file(path) as f:
            values = f.read_all().column("ref_seq_logps").to_pylist()
        if len(values) != len(seqs):
            values = None  # stale or foreign cache: recompute
    if values is None:
        values = sequence_logps(model_dir, seqs, pad_id, dtype, batch_size, bf16)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with ipc.new_file(tmp, pa.schema([("ref_seq_logps", pa.float64())])) as w:
            w.write_table(pa.table({"ref_seq_logps": values}))
        tmp.replace(path)
    for seq, value in zip(seqs, values):
        seq["ref_seq_logps"] = value
    return path
