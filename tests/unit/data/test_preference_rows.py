"""Preference and KTO rows: shapes, hh-rlhf dialogue splitting, bad rows, tokenization."""

import json

import pytest

from tunefleet.data import DataError, read_rows
from tunefleet.data.batching import BATCHERS, mismatched
from tunefleet.data.preference import (
    dialogue_messages,
    kto_row_problem,
    preference_row_problem,
    split_shared_prefix,
    to_kto_example,
    to_preference_example,
    tokenize_kto,
    tokenize_pair,
)


def test_string_and_message_pairs():
    ex = to_preference_example({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."})
    assert ex.prompt == ({"role": "user", "content": "Hi?"},) and ex.chosen == "Hello!" and ex.rejected == "Go away."
    msgs = {"prompt": [{"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "No."}]}
    assert to_preference_example(msgs).rejected == "No."


def test_hh_rlhf_dialogues_split_at_the_shared_assistant_marker():
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: And salt?\n\nAssistant:"
    chosen, rejected = shared + " Yes, a pinch.", shared + " No idea."
    prompt, c, r = split_shared_prefix(chosen, rejected)
    assert prompt.endswith("\n\nAssistant:") and c == "Yes, a pinch." and r == "No idea."
    ex = to_preference_example({"chosen": chosen, "rejected": rejected})
    assert [m["role"] for m in ex.prompt] == ["user", "assistant", "user"]
    assert ex.prompt[-1]["content"] == "And salt?"
    assert dialogue_messages("\n\nHuman: a\n\nAssistant: b") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


@pytest.mark.parametrize("row,reason", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "q", "chosen": "", "rejected": "x"}, "empty"),
    ({"prompt": "q", "chosen": "x"}, "expected a preference row"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a"}, "identical"),
])
def test_bad_pairs_have_reasons(row, reason):
    assert reason in preference_row_problem(row)


def test_bad_pairs_are_reported_by_file_and_line(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "a"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:2: .*identical"):
        read_rows(p, validate=preference_row_problem)
    with pytest.warns(UserWarning, match="1"):
        res = read_rows(p, on_bad_row="skip", validate=preference_row_problem)
    assert len(res.rows) == 1 and res.bad_rows[0].line == 2


def test_kto_rows():
    ex = to_kto_example({"prompt": "q", "completion": "a", "label": False})
    assert ex.label is False and ex.completion == "a"
    assert "boolean" in kto_row_problem({"prompt": "q", "completion": "a"}) or \
        "label" in kto_row_problem({"prompt": "q", "completion": "a"})
    assert "true or false" in kto_row_problem({"prompt": "q", "completion": "a", "label": "yes"})


def test_pair_tokenization_and_batch_layout(chat_tokenizer):
    ex = to_preference_example({"prompt": "Say hi", "chosen": "hi there", "rejected": "no"})
    pair = tokenize_pair(chat_tokenizer, ex, 128)
    n_prompt = pair["chosen"]["loss_mask"].index(1)
    assert pair["chosen"]["input_ids"][:n_prompt] == pair["rejected"]["input_ids"][:n_prompt]
    batch = BATCHERS["pairs"].collate([pair, pair], 0)
    assert batch["main"]["input_ids"].shape[0] == 4  # chosen, chosen, rejected, rejected
    assert BATCHERS["pairs"].sequences([pair, pair]) == 2


def test_kto_mismatched_pairs_swap_completions(chat_tokenizer):
    rows = [tokenize_kto(chat_tokenizer, to_kto_example({"prompt": p, "completion": c, "label": True}), 128)
            for p, c in (("A?", "aaa"), ("B?", "bb"))]
    mm = mismatched(rows)
    pa = rows[0]["loss_mask"].index(1)
    pb = rows[1]["loss_mask"].index(1)
    assert mm[0]["input_ids"] == rows[0]["input_ids"][:pa] + rows[1]["input_ids"][pb:]
    assert sum(mm[0]["loss_mask"]) == sum(rows[1]["loss_mask"])
    batch = BATCHERS["kto"].collate(rows, 0)
    assert batch["extras"]["kto_label"].tolist() == [1.0, 1.0] and "kl" in batch["aux"]


def test_long_pairs_keep_the_latest_context(chat_tokenizer):
    prompt = [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "ok"},
              {"role": "user", "content": "last question?"}]
    ex = to_preference_example({"prompt": prompt, "chosen": "yes " * 40, "rejected": "no"})
    pair = tokenize_pair(chat_tokenizer, ex, 128)
    for side in ("chosen", "rejected"):
        assert len(pair[side]["input_ids"]) <= 128 and sum(pair[side]["loss_mask"]) > 0
    text = chat_tokenizer.decode(pair["rejected"]["input_ids"])
    assert "last question?" in text and text.rstrip().endswith(("no<|im_end|>", "no"))
    n = pair["chosen"]["loss_mask"].index(1)
    assert pair["chosen"]["input_ids"][:n] == pair["rejected"]["input_ids"][:n]
