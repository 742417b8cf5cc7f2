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
def sequence_stats(scorer, seqs: list[dict], pad_id: int, batch_size: int = 8,
                   label: str = "pref-eval") -> list[tuple[float, int]]:
    """Per sequence: (sum of response-token log-probs, token count), or (value, 1) for
    value models."""
    out, t0 = [], time.monotonic()
    for i in range(0, len(seqs), batch_size):
        b = collate(seqs[i:i + batch_size], pad_id)
        res = scorer(input_ids=b["input_ids"], labels=b["labels"], position_ids=b["position_ids"])
        if res.dim() == 2:
            mask = (b["labels"] != IGNORE).float()
            out.extend(zip((res * mask).sum(-1).tolist(), mask.sum(-1).int().tolist()))
        else:
            out.extend((v, 1) for v in res.tolist())
        done = len(out)
        print(f"[{label}] scored {done}/{len(seqs)} sequences ({done / max(time.monotonic() - t0, 1e-9):.1f}/s)",
              flush=True)
    return out


def sequence_scores(scorer, seqs: list[dict], pad_id: int, batch_size: int = 8, label: str = "score") -> list[float]:
    """Per sequence: a value (value models) or the mean response-token log-prob."""
    return [s / max(n, 1) for s, n in sequence_stats(scorer, seqs, pad_id, batch_size, label)]


def pair_stats(scorer, pairs: list[dict], pad_id: int, batch_size: int = 8, label: str = "pref-eval"):
    """(chosen stats, rejected stats) of tokenized pairs ({"chosen", "rejected"})."""
    return (sequence_stats(scorer, [p["chosen"] for p in pairs], pad_id, batch_size, label),
            sequence_stats(scorer, [p["rejected"] for p in pairs], pad_id, batch_size, label))


def preference_metrics(chosen, rejected, base=None) -> dict[str, float]:
    """preference_accuracy: chosen has the higher mean log-prob (or value). With `base`
    (the starting model's pair_stats), implicit_reward_accuracy: chosen gained more
    log-prob than rejected relative to the start, the DPO notion of accuracy."""
    n = max(1, len(chosen))
    out = {"preference_accuracy": sum(c[0] / c[1] > r[0] / r[1] for c, r in zip(chosen, rejected)) / n}
    if base is not None:
        bc, br = base
        wins = sum((c[0] - b0[0]) > (r[0] - b1[0]) for c, r, b0, b1 in zip(chosen, rejected, bc, br))
        out["implicit_reward_accuracy"] = wins / n
    return out
