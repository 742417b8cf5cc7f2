"""Log-likelihood scoring with an HF causal LM, the way lm-evaluation-harness's `hf` model does
it, so `tunefleet eval mc:...` gives the same accuracies as an `output_type: multiple_choice`
harness task on the same rows.

Conventions copied from lm-eval 0.4.x (api/model.py `_encode_pair`, api/task.py
`process_results`):
  context = the question; continuation = target_delimiter (" ") + choice;
  trailing spaces of the context move to the continuation; context and context+continuation
  are tokenised whole (the tokenizer's default special tokens) and the continuation's tokens
  are what the longer encoding adds; an empty context is replaced by the prefix token (BOS, else EOS).
  acc      = [argmax_i sum log p(continuation_i | context) == gold]
  acc_norm = [argmax_i sum log p(...) / len(choice_i in characters) == gold]
Raw text: no chat template.
"""

from __future__ import annotations

import time

import numpy as np
import torch

TARGET_DELIMITER = " "


def prefix_token_id(tokenizer) -> int:
    """lm-eval's conditioning token for an empty context: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's `_encode_pair` builds them."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def score_windows(model, windows: list[tuple[list[int], list[int]]], batch_size: int = 8,
                  max_length: int | None = None) -> list[float]:
    """sum log p(target | input) for each (input ids, target ids) window, where the targets are
    the last len(target) tokens of input + target: one float per window.

    A batch is right-padded to [B, T]; logits [B, T, V] are read at the T_i target positions.
    """
    max_length = max_length or model.config.max_position_embeddings
    out: list[float] = []
    model.eval()
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        seqs = [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for i, ((_, cont), s) in enumerate(zip(chunk, seqs)):
            rows = logp[i, len(s) - len(cont):len(s)]  # [len(cont), V]
            out.append(float(rows.gather(-1, torch.tensor(cont)[:, None]).sum()))
    return out


def choice_logprobs(model, tokenizer, question: str, choices: tuple[str, ...], batch_size: int = 8) -> list[float]:
    """sum log p(" " + choice | question) per choice."""
    pairs = [encode_pair(tokenizer, question, TARGET_DELIMITER + c) for c in choices]
    return score_windows(model, pairs, batch_size)


def mc_verdict(lls: list[float], choices: tuple[str, ...], gold: int) -> dict:
    """acc, acc_norm and the two predictions for one row (ties go to the first choice, as np.argmax)."""
    lls_arr = np.array(lls)
    lengths = np.array([float(len(c)) for c in choices])
    pred, pred_norm = int(np.argmax(lls_arr)), int(np.argmax(lls_arr / lengths))
    return {"pred": pred, "pred_norm": pred_norm, "acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}


def progress(label: str, done: int, total: int, t0: float, every: int = 16) -> None:
    """A one-line status every `every` items and at the end: count, rate, ETA."""
    if done % every and done != total:
        return
    rate = done / max(time.monotonic() - t0, 1e-9)
    print(f"[{label}] {done}/{total} ({rate:.1f}/s, eta {(total - done) / max(rate, 1e-9):.0f} s)", flush=True)


def run_mc(model, tokenizer, suite, batch_size: int = 8) -> tuple[dict, list[dict]]:
    """(metrics {acc, acc_norm, n}, per-example rows {id, input, reference, output, score, ...})."""
    rows, t0 = [], time.monotonic()
    for ex in suite.examples:
        lls = choice_logprobs(model, tokenizer, ex.prompt, ex.choices, batch_size)
        v = mc_verdict(lls, ex.choices, int(ex.reference))
        rows.append({"id": ex.id, "input": ex.prompt, "reference": ex.choices[int(ex.reference)],
                     "output": ex.choices[v["pred"]], "score": v["acc"], "acc_norm": v["acc_norm"],
                     "logprobs": [float(x) for x in lls]})
        progress(f"eval {suite.name}", len(rows), len(suite.examples), t0)
    n = len(rows)
    metrics = {"acc": sum(r["score"] for r in rows) / n, "acc_norm": sum(r["acc_norm"] for r in rows) / n, "n": n}
    return metrics, rows
