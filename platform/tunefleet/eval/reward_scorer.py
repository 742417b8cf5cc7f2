"""Score (prompt, response) pairs with a trained reward model: the `tunefleet score`
command, and the `reward_model` reward function of online RL."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunefleet.data.formats import SftExample
from tunefleet.data.tokenize import tokenize_sft


class RewardScorer:
    """A reward model from a trained run's `model/` dir (full) or `adapter/` dir (LoRA,
    with the base model named in its adapter_config.json or given as `base`)."""

    def __init__(self, model_dir: str | Path, base: str | None = None, dtype: str = "float32",
                 max_length: int = 1024):
        from tunefleet.eval.preference import load_scorer
        from tunefleet.models.registry import load_tokenizer, resolve_model

        model_dir = Path(model_dir)
        adapter = model_dir / "adapter_config.json"
        if adapter.is_file():
            base = base or json.loads(adapter.read_text())["base_model_name_or_path"]
            base_dir = str(resolve_model(base))
            self.scorer = load_scorer(base_dir, str(model_dir), True, True, dtype)
        else:
            base_dir = str(model_dir)
            self.scorer = load_scorer(base_dir, None, False, True, dtype)
        self.tokenizer = load_tokenizer(base_dir)
        self.max_length = max_length

    def score(self, prompts: list, responses: list[str], batch_size: int = 8) -> list[float]:
        """prompts: strings or chat message lists; returns one reward per response."""
        from tunefleet.eval.preference import sequence_scores

        seqs = []
        for p, r in zip(prompts, responses):
            msgs = tuple(p) if isinstance(p, list) else ({"role": "user", "content": p},)
            tok = tokenize_sft(self.tokenizer, SftExample(msgs, r), self.max_length)
            # A prompt longer than max_length would leave no response: score it untruncated
            # rather than fail a whole RL step over one sample.
            seqs.append(tok or tokenize_sft(self.tokenizer, SftExample(msgs, r), 10**9))
        with torch.no_grad():
            return sequence_scores(self.scorer, seqs, self.tokenizer.pad_token_id, batch_size, label="score")


def score_file(model_dir: str, input_path: str, output_path: str, base: str | None = None,
               on_bad_row: str = "error") -> int:
    """Read SFT-shaped rows (prompt/completion, messages, question/answer), add a `reward`
    column, write Parquet. Returns the number of rows scored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunefleet.data import read_rows, sft_row_problem, to_sft_example

    rows = read_rows(input_path, on_bad_row=on_bad_row, validate=sft_row_problem).rows
    examples = [to_sft_example(r) for r in rows]
    scorer = RewardScorer(model_dir, base)
    rewards = scorer.score([list(e.prompt) for e in examples], [e.response for e in examples])
    table = pa.table({"prompt": [json.dumps(list(e.prompt)) for e in examples],
                      "response": [e.response for e in examples], "reward": rewards})
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output_path)
    return len(rows)
