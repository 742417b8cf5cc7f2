"""Micro-batch layouts, chosen by the algorithm config's `BATCH` kind (never by its name).

Every batcher turns a list of tokenized rows into
    {"main": collated tensors [B, T], "aux": {name: collated tensors}, "extras": {name: tensor}}
and says how many sequences a list of rows counts for loss normalisation.

- single: one sequence per row (SFT, RL).
- pairs:  rows {"chosen", "rejected"}; main = b chosen rows then b rejected rows (B = 2b);
          normalised per pair. Precomputed reference sums travel as extras["ref_seq_logps"] [2b].
- kto:    rows with "kto_label"; aux["kl"] pairs each prompt with the next row's completion
          of the step's batch (mismatched pairs estimate KTO's KL baseline).
- rl:     rollout rows (prompt + sampled response); their per-response-token lists
          ("advantages", "behaviour_logps", optional "ref_logps") become extras [B, T]
          aligned with the collated labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunefleet.data.tokenize import collate


@dataclass(frozen=True)
class Batcher:
    """`prepare`, when set, runs on the whole step's rows before they are split into
    micro-batches (train/sources.py plan_rows): for what depends on the global batch."""

    collate: Callable[[list[dict], int], dict]
    sequences: Callable[[list[dict]], int]
    prepare: Callable[[list[dict]], list[dict]] | None = None


def _float(values: list[float]):
    import torch

    return torch.tensor(values, dtype=torch.float32)


def _single(rows: list[dict], pad_id: int) -> dict:
    extras = {"ref_seq_logps": _float([r["ref_seq_logps"] for r in rows])} if "ref_seq_logps" in rows[0] else {}
    return {"main": collate(rows, pad_id), "aux": {}, "extras": extras}


def _pairs(rows: list[dict], pad_id: int) -> dict:
    seqs = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    extras = {}
    if "ref_seq_logps" in rows[0]["chosen"]:
        extras["ref_seq_logps"] = _float([s["ref_seq_logps"] for s in seqs])
    return {"main": collate(seqs, pad_id), "aux": {}, "extras": extras}


def mismatched(rows: list[dict]) -> list[dict]:
    """Prompt of row i + completion of row i+1 (mod b): sequences no one preferred."""
    out = []
    for i, row in enumerate(rows):
        other = rows[(i + 1) % len(rows)]
        p_len = row["loss_mask"].index(1) if 1 in row["loss_mask"] else len(row["loss_mask"])
        o_len = other["loss_mask"].index(1) if 1 in other["loss_mask"] else len(other["loss_mask"])
        resp_ids, resp_mask = other["input_ids"][o_len:], other["loss_mask"][o_len:]
        out.append({"input_ids": row["input_ids"][:p_len] + resp_ids, "loss_mask": [0] * p_len + resp_mask})
    return out


def _kto_pairs(rows: list[dict]) -> list[dict]:
    """Each row of the step with its KL pair (mismatched over the *step's* rows), so that
    the pairs, and KTO's baseline, do not depend on how the step is split."""
    return [{**r, "kl_pair": m} for r, m in zip(rows, mismatched(rows))]


def _kto(rows: list[dict], pad_id: int) -> dict:
    batch = _single(rows, pad_id)
    batch["extras"]["kto_label"] = _float([r["kto_label"] for r in rows])
    pairs = [r["kl_pair"] for r in rows] if "kl_pair" in rows[0] else mismatched(rows)
    batch["aux"]["kl"] = collate(pairs, pad_id)
    return batch


TOKEN_EXTRAS = ("advantages", "behaviour_logps", "ref_logps")


def token_columns(rows: list[dict], labels, names=TOKEN_EXTRAS) -> dict:
    """Scatter each row's per-response-token list (one value per target token, in order)
    onto the target positions of `labels` [B, T] (labels != -100): -> {name: [B, T]}."""
    import torch

    sel = labels != -100
    counts = sel.sum(dim=1).tolist()
    out = {}
    for name in names:
        present = [name in r for r in rows]
        if not any(present):
            continue
        if not all(present):
            raise ValueError(f"{name}: present in some rows only (rows {present.index(False)} lacks it)")
        for b, (r, n) in enumerate(zip(rows, counts)):
            if len(r[name]) != n:  # checked per row: a mismatch would shift every later value
                raise ValueError(f"{name}: row {b} has {len(r[name])} values for {n} target tokens")
        flat = [v for r in rows for v in r[name]]
        out[name] = torch.zeros(labels.shape, dtype=torch.float32).masked_scatter(sel, _float(flat))
    return out


def _rl(rows: list[dict], pad_id: int) -> dict:
    main = collate(rows, pad_id)
    return {"main": main, "aux": {}, "extras": token_columns(rows, main["labels"])}


BATCHERS: dict[str, Batcher] = {
    "single": Batcher(_single, len),
    "pairs": Batcher(_pairs, len),
    "kto": Batcher(_kto, len, _kto_pairs),
    "rl": Batcher(_rl, len),
}
