"""Perplexity of raw text, defined as lm-evaluation-harness's `loglikelihood_rolling` tasks
define it, so `tunefleet eval ppl:...` and a harness task on the same rows agree.

Each text is tokenised whole (the tokenizer's default special tokens), scored in disjoint
rolling windows of at most `max_length` tokens, the first conditioned on the prefix token
(BOS, else EOS): LL(doc) = sum_t log p(x_t | x_<t) over every token of the doc. Over the suite
  word_perplexity = exp(-sum LL / sum words)   (words: len(re.split(r"\\s+", text)))
  byte_perplexity = exp(-sum LL / sum UTF-8 bytes)
  bits_per_byte   = -sum LL / sum bytes / ln 2
  token_perplexity = exp(-sum LL / sum tokens)  (ours only; tokenizer dependent)
word_perplexity is the headline number and the one the lm-eval parity test compares.
"""

from __future__ import annotations

import math
import re
import time

from tunefleet.eval.mc import prefix_token_id, progress, score_windows


def rolling_windows(tokens: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window: (input, target)
    pairs whose targets cover `tokens` once, in order."""
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix] + tokens[:first - 1], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_length)
        end = done + n
        windows.append((tokens[end - max_length - 1:end - 1], tokens[end - n:end]))
        done = end
    # Disjoint: the input keeps only what precedes the targets (the targets are re-appended).
    return [(inp[:len(inp) - (len(tgt) - 1)], tgt) for inp, tgt in windows]


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def suite_metrics(lls: list[float], texts: list[str], tokens: list[int]) -> dict:
    """The four perplexities of the module doc from per-doc log-likelihoods."""
    total = sum(lls)
    words = sum(count_words(t) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / nbytes),
            "bits_per_byte": -total / nbytes / math.log(2), "token_perplexity": math.exp(-total / sum(tokens)),
            "n": len(texts)}


def doc_loglikelihood(model, tokenizer, text: str, max_length: int, batch_size: int = 8) -> tuple[float, int]:
    """(LL of `text`, its number of tokens)."""
    tokens = tokenizer.encode(text)
    windows = rolling_windows(tokens, prefix_token_id(tokenizer), max_length)
    return sum(score_windows(model, windows, batch_size, max_length)), len(tokens)


def run_ppl(model, tokenizer, suite, batch_size: int = 8, max_length: int | None = None) -> tuple[dict, list[dict]]:
    """(metrics, per-example rows {id, input, reference, output: LL as text, score: LL, tokens})."""
    max_length = max_length or model.config.max_position_embeddings
    rows, t0 = [], time.monotonic()
    for ex in suite.examples:
        ll, n = doc_loglikelihood(model, tokenizer, ex.prompt, max_length, batch_size)
        rows.append({"id": ex.id, "input": ex.prompt, "reference": "", "output": f"{ll:.6f}", "score": ll,
                     "tokens": n})
        progress(f"eval {suite.name}", len(rows), len(suite.examples), t0)
    texts = [ex.prompt for ex in suite.examples]
    return suite_metrics([r["score"] for r in rows], texts, [r["tokens"] for r in rows]), rows
