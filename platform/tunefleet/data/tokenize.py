"""Tokenize SFT examples with a chat template, pack them, and collate batches.

Shapes used throughout: ``B`` = rows in a batch, ``T`` = longest row in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tunefleet.data.formats import SftExample

if TYPE_CHECKING:  # torch is only needed by collate(); keep `import tunefleet.data` light.
    import torch

IGNORE_INDEX = -100


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True);
    # older versions return a plain list.
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(i) for i in encoded]


def _chat_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    return _ids(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True
        )
    )


def user_prompt_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text as one user turn under the model's chat template, with the generation
    prompt appended: what a RolloutPool is given to answer it. [len(texts)][P_i] ids."""
    return [_chat_ids(tokenizer, [{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]


def _trim_after_last_eos(ids: list[int], start: int, eos_id: int | None) -> list[int]:
    """Drop template filler (e.g. ChatML's trailing newline) after the final end-of-turn.

    Training on it is pointless (generation stops at EOS) and it would sit between
    packed examples.
    """
    if eos_id is None:
        return ids
    for i in range(len(ids) - 1, start - 1, -1):
        if ids[i] == eos_id:
            return ids[: i + 1]
    return ids


def _fallback_ids(tokenizer: Any, prompt_ids: list[int], response: str) -> list[int]:
    # Used when the template rewrites earlier turns once a response is present, so the
    # prompt is not a prefix of the full conversation.
    response_ids = _ids(tokenizer(response, add_special_tokens=False))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return prompt_ids + response_ids + eos


def tokenize_sft(tokenizer: Any, example: SftExample, max_length: int) -> dict | None:
    """Tokenize one example into ``{"input_ids": list[int], "loss_mask": list[int]}``.

    ``loss_mask`` is 1 on response tokens (including the final end-of-turn/EOS token) and
    0 on prompt tokens. Rows longer than ``max_length`` are cut from the right; returns
    None when the cut leaves no response tokens (the caller counts it as a bad row).
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    prompt = [dict(m) for m in example.prompt]
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full = prompt + [{"role": "assistant", "content": example.response}]
    full_ids = _chat_ids(tokenizer, full, add_generation_prompt=False)
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        ids = _trim_after_last_eos(full_ids, len(prompt_ids), tokenizer.eos_token_id)
    else:
        ids = _fallback_ids(tokenizer, prompt_ids, example.response)
    mask = [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        return None
    return {"input_ids": ids, "loss_mask": mask}


class _FirstFit:
    """Leftmost bin with enough room, in O(log n), via a max segment tree over bin space."""

    def __init__(self, max_bins: int, capacity: int) -> None:
        self.size = 1
        while self.size < max(1, max_bins):
            self.size *= 2
        self.tree = [capacity] * (2 * self.size)

    def place(self, length: int) -> int:
        """Return the leftmost bin index with room for ``length`` and reserve the space."""
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= length else 2 * node + 1
        self.tree[node] -= length
        index = node - self.size
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return index


def _empty_packed() -> dict:
    return {"input_ids": [], "loss_mask": [], "position_ids": [], "num_examples": 0}


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Greedy first-fit packing of tokenized examples into rows of at most ``max_length``.

    Each packed row has ``input_ids``, ``loss_mask``, ``position_ids`` (restarting at 0
    for every example, so transformers can build a block-diagonal causal mask when
    ``attention_mask`` is None) and ``num_examples``. Examples keep their input order
    within a row; the result is deterministic.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    bins = _FirstFit(len(examples), max_length)
    packed: list[dict] = []
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        if n == 0 or n > max_length:
            raise ValueError(f"example {i} has {n} tokens; packing needs 1..{max_length}")
        if len(ex["loss_mask"]) != n:
            raise ValueError(f"example {i}: loss_mask length {len(ex['loss_mask'])} != {n}")
        index = bins.place(n)
        if index == len(packed):
            packed.append(_empty_packed())
        row = packed[index]
        row["input_ids"].extend(ex["input_ids"])
        row["loss_mask"].extend(ex["loss_mask"])
        row["position_ids"].extend(range(n))
        row["num_examples"] += 1
    return packed


def _row_labels(ids: list[int], mask: list[int], positions: list[int] | None) -> list[int]:
    labels = []
    for t in range(len(ids) - 1):
        # Never predict across a packing boundary (next token starts a new example).
        boundary = positions is not None and positions[t + 1] == 0
        labels.append(ids[t + 1] if mask[t + 1] and not boundary else IGNORE_INDEX)
    if ids:
        labels.append(IGNORE_INDEX)  # the last token has no next token to predict
    return labels


def _row_positions(row: dict, length: int, width: int) -> list[int]:
    positions = list(row.get("position_ids") or range(length))
    start = positions[-1] + 1 if positions else 0
    # Padding continues the count: a 0 there would look like a new packed sequence.
    return positions + list(range(start, start + width - length))


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into a batch of ``torch.long`` tensors, all of shape ``[B, T]``.

    * ``input_ids``: tokens, ``pad_id`` on padding.
    * ``attention_mask``: 1 on real tokens, 0 on padding. For packed rows pass None to
      the model instead so it derives per-example masks from ``position_ids``.
    * ``labels``: already shifted next-token targets, ``labels[t] = input_ids[t+1]``,
      -100 where ``loss_mask[t+1] == 0``, on padding, at the last position and across
      packing boundaries. Compare with ``logits[:, t]`` directly (or pass as
      ``shift_labels=``); do NOT pass as HF ``labels=``, which shifts again.
    * ``position_ids``: from the row if present, else ``arange``; padding continues it.
    """
    import torch

    if not rows:
        raise ValueError("collate() needs at least one row")
    width = max(len(r["input_ids"]) for r in rows)
    if width == 0:
        raise ValueError("collate() got only empty rows")
    batch: dict[str, list[list[int]]] = {
        "input_ids": [], "attention_mask": [], "labels": [], "position_ids": []
    }
    for r in rows:
        n, pad = len(r["input_ids"]), width - len(r["input_ids"])
        positions = r.get("position_ids")
        batch["input_ids"].append(list(r["input_ids"]) + [pad_id] * pad)
        batch["attention_mask"].append([1] * n + [0] * pad)
        labels = _row_labels(r["input_ids"], r["loss_mask"], positions)
        batch["labels"].append(labels + [IGNORE_INDEX] * pad)
        batch["position_ids"].append(_row_positions(r, n, width))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
