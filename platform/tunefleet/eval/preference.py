"""Held-out preference accuracy: how often a model prefers the chosen response.

Language models: the chosen response has the higher mean per-token log-prob (length
normalised, so that the model's own preference is measured, and defined for the starting
model too). Reward models: the chosen response gets the higher score.
"""

from __future__ import annotations

import time

import torch

from tunefleet.data.tokenize import collate
from tunefleet.models.policy import IGNORE, TokenLogpModel, ValueModel


def load_scorer(model_dir: str, export_dir: str | None, is_lora: bool, value_head: bool, dtype: str):
    """The base model or the trained result, wrapped to return logps [B, T] or values [B]."""
    from tunefleet.models.policy import _load_value_model
    from tunefleet.models.registry import load_model

    if value_head:
        base_dir = export_dir if export_dir and not is_lora else model_dir
        lm = _load_value_model(base_dir, dtype)
    else:
        lm = load_model(export_dir if export_dir and not is_lora else model_dir, dtype=dtype)
    if export_dir and is_lora:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, export_dir).merge_and_unload()
    return (ValueModel if value_head else TokenLogpModel)(lm).eval()


@torch.no_grad()
def sequence_scores(scorer, seqs: list[dict], pad_id: int, batch_size: int = 8, label: str = "pref-eval") -> list[float]:
    """Per sequence: a value (value models) or the mean response-token log-prob."""
    out, t0 = [], time.monotonic()
    for i in range(0, len(seqs), batch_size):
        b = collate(seqs[i:i + batch_size], pad_id)
        res = scorer(input_ids=b["input_ids"], labels=b["labels"], position_ids=b["position_ids"])
        if res.dim() == 2:
            mask = (b["labels"] != IGNORE).float()
            res = (res * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        out.extend(res.tolist())
    print(f"[{label}] scored {len(seqs)} sequences in {time.monotonic() - t0:.0f}s", flush=True)
    return out


def preference_accuracy(scorer, pairs: list[dict], pad_id: int, batch_size: int = 8, label: str = "pref-eval") -> float:
    """Fraction of tokenized pairs ({"chosen", "rejected"}) where chosen scores higher."""
    chosen = sequence_scores(scorer, [p["chosen"] for p in pairs], pad_id, batch_size, label)
    rejected = sequence_scores(scorer, [p["rejected"] for p in pairs], pad_id, batch_size, label)
    return sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(pairs))
