"""Greedy-decoding exact-match accuracy of a model on a built-in task's held-out problems."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class EvalResult:
    accuracy: float
    correct: int
    total: int
    samples: list[dict] = field(default_factory=list)


def load_trained(model_dir: str, export_dir: str | None, is_lora: bool, dtype: str = "float32"):
    """The base model, or the trained result: a full HF export dir, or base + LoRA adapter
    (merged, so generation runs at base-model speed)."""
    from tunefleet.models.registry import load_model

    if export_dir is None:
        return load_model(model_dir, dtype=dtype)
    if not is_lora:
        return load_model(export_dir, dtype=dtype)
    from peft import PeftModel

    base = load_model(model_dir, dtype=dtype)
    return PeftModel.from_pretrained(base, export_dir).merge_and_unload()


def _prompt_texts(tokenizer, prompts: list[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                    label: str = "eval") -> list[str]:
    """Chat-formatted greedy completions, batched with left padding."""
    model.eval()
    texts = _prompt_texts(tokenizer, prompts)
    out, t0 = [], time.monotonic()
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        rate = len(out) / max(time.monotonic() - t0, 1e-9)
        print(f"[{label}] generated {len(out)}/{len(texts)} ({rate:.1f} prompts/s)", flush=True)
    return out


def task_accuracy(model, tokenizer, task, problems, max_new_tokens: int = 32, batch_size: int = 32,
                  label: str = "eval") -> EvalResult:
    """Fraction of `problems` whose greedy completion `task.verify`s."""
    if not problems:
        return EvalResult(0.0, 0, 0)
    completions = greedy_generate(model, tokenizer, [p.prompt for p in problems], max_new_tokens, batch_size, label)
    samples = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "completion": c,
                "correct": task.verify(c, p.answer)} for p, c in zip(problems, completions)]
    correct = sum(s["correct"] for s in samples)
    return EvalResult(correct / len(problems), correct, len(problems), samples)
