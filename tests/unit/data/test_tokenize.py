import copy

import pytest
import torch

from tunefleet.data.formats import SftExample
from tunefleet.data.tokenize import collate, pack_examples, tokenize_sft

EXAMPLE = SftExample(
    prompt=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}),
    response="It is 4.",
)


def _masked_text(tok, out, value):
    return tok.decode([i for i, m in zip(out["input_ids"], out["loss_mask"]) if m == value])


def test_loss_mask_covers_exactly_the_response(chat_tokenizer):
    out = tokenize_sft(chat_tokenizer, EXAMPLE, max_length=512)
    assert len(out["input_ids"]) == len(out["loss_mask"])
    assert _masked_text(chat_tokenizer, out, 1) == "It is 4.<|im_end|>"
    assert _masked_text(chat_tokenizer, out, 0) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Mask is a single contiguous block of ones at the end, ending on EOS.
    ones = out["loss_mask"].index(1)
    assert all(out["loss_mask"][ones:]) and out["input_ids"][-1] == chat_tokenizer.eos_token_id


def test_fallback_when_prompt_is_not_a_prefix(chat_tokenizer):
    tok = copy.deepcopy(chat_tokenizer)
    # The generation prompt differs from how the assistant turn is rendered.
    gen = "{% if add_generation_prompt %}<|im_start|>"
    tok.chat_template = tok.chat_template.replace(gen + "assistant\n", gen + "bot\n")
    out = tokenize_sft(tok, EXAMPLE, max_length=512)
    assert _masked_text(tok, out, 1) == "It is 4.<|im_end|>"
    assert _masked_text(tok, out, 0).endswith("<|im_start|>bot\n")


def test_truncation_keeps_prompt_start(chat_tokenizer):
    full = tokenize_sft(chat_tokenizer, EXAMPLE, max_length=512)
    prompt_len = full["loss_mask"].index(1)
    cut = tokenize_sft(chat_tokenizer, EXAMPLE, max_length=prompt_len + 3)
    assert cut["input_ids"] == full["input_ids"][: prompt_len + 3]
    assert sum(cut["loss_mask"]) == 3


def test_truncation_without_response_returns_none(chat_tokenizer):
    full = tokenize_sft(chat_tokenizer, EXAMPLE, max_length=512)
    assert tokenize_sft(chat_tokenizer, EXAMPLE, max_length=full["loss_mask"].index(1)) is None


def _ex(start, n, prompt):
    ids = list(range(start, start + n))
    return {"input_ids": ids, "loss_mask": [0] * prompt + [1] * (n - prompt)}


def _segments(row):
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return [
        {"input_ids": row["input_ids"][a:b], "loss_mask": row["loss_mask"][a:b]}
        for a, b in zip(starts, starts[1:])
    ]


def test_pack_first_fit_keeps_tokens_masks_and_restarts_positions():
    examples = [_ex(100, 5, 2), _ex(200, 3, 1), _ex(300, 4, 3), _ex(400, 2, 0), _ex(500, 6, 2)]
    packed = pack_examples(examples, max_length=8)
    assert [r["num_examples"] for r in packed] == [2, 2, 1]
    assert packed[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert packed[1]["input_ids"] == [300, 301, 302, 303, 400, 401]
    assert all(len(r["input_ids"]) <= 8 for r in packed)
    segments = [s for r in packed for s in _segments(r)]
    assert sorted(segments, key=lambda s: s["input_ids"]) == examples
    assert pack_examples(examples, max_length=8) == packed


def test_pack_rejects_too_long_example():
    with pytest.raises(ValueError, match="example 0 has 9 tokens"):
        pack_examples([_ex(0, 9, 1)], max_length=8)


def test_collate_shifts_labels_and_pads():
    rows = [
        {"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]},
        {"input_ids": [4, 5], "loss_mask": [0, 1]},
    ]
    batch = collate(rows, pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[2, 3, -100], [5, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert all(t.dtype == torch.long and t.shape == (2, 3) for t in batch.values())


def test_collate_packed_rows_never_predict_across_examples():
    packed = {
        "input_ids": [1, 2, 3, 4, 5],
        "loss_mask": [0, 1, 1, 1, 1],
        "position_ids": [0, 1, 2, 0, 1],
    }
    short = {"input_ids": [6, 7, 8], "loss_mask": [0, 0, 1], "position_ids": [0, 1, 0]}
    batch = collate([packed, short], pad_id=0)
    assert batch["labels"].tolist() == [[2, 3, -100, 5, -100], [-100, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]


def test_collate_tokenized_batch(chat_tokenizer):
    out = tokenize_sft(chat_tokenizer, EXAMPLE, max_length=512)
    batch = collate([out], pad_id=chat_tokenizer.pad_token_id)
    labels = [x for x in batch["labels"][0].tolist() if x != -100]
    assert chat_tokenizer.decode(labels) == "It is 4.<|im_end|>"


def test_collate_rejects_empty():
    with pytest.raises(ValueError, match="at least one row"):
        collate([], pad_id=0)
