"""The final checkpoint also carries `export/`: a PEFT adapter dir or a full HF model dir,
so evaluation, MLflow and users can load the result without tunefleet."""

from __future__ import annotations

from pathlib import Path

from tunefleet.models.export import export_adapter, export_full
from tunefleet.train.state import gather_trainable


def export_final(ckpt_dir: Path, ctx, rank: int, model_dir: str) -> None:
    """Collective (gathers the shards); rank 0 writes `ckpt_dir/export`."""
    weights = gather_trainable(ctx.policy)
    if rank != 0:
        return
    lm = ctx.policy.module.lm
    dest = Path(ckpt_dir) / "export"
    if ctx.policy.is_lora:
        export_adapter(dest, lm, weights)
    else:
        export_full(dest, model_dir, weights, tied=bool(getattr(lm.config, "tie_word_embeddings", False)))
