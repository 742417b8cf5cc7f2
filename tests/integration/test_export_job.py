"""`tunefleet export` of a real LoRA run: the merged directory answers as the unmerged adapter
does, in transformers and in vLLM, and the registry records its lineage."""

import json
import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunefleet.cli.main import main
from tunefleet.config import load_config
from tunefleet.models.registry import resolve_model
from tunefleet.pipelines.train_job import run_train_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN = [
    "model.name=tiny-llama", "model.lora.r=4", "data.task=reverse", "data.num_train=32", "data.num_eval=4",
    "data.max_length=256", "trainer.num_workers=1", "trainer.max_steps=3", "trainer.batch_size=8",
    "trainer.micro_batch_size=4", "trainer.lr=3e-2", "eval.max_new_tokens=4", "eval.before=false", "run.name=exp",
]
NEW_TOKENS = 8
VLLM_SCRIPT = r"""
import json, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
              kv_cache_memory_bytes=1 << 28)
    prompts = [{"prompt_token_ids": ids} for ids in json.loads(sys.argv[2])]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=int(sys.argv[3]), ignore_eos=True))
    print("TOKENS " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
"""


def _prompts(tok) -> list[list[int]]:
    """16 chat-formatted prompts, token ids."""
    texts = [f"Reverse: {w}" for w in ("cat", "dog", "tree", "ray", "lora", "vllm", "abc", "hello", "tiny", "merge",
                                         "step", "model", "export", "xyz", "2 3 4", "q")]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


def _greedy(model, prompts: list[list[int]], n: int = NEW_TOKENS) -> list[list[int]]:
    """Argmax decoding, n tokens, no EOS stop (vLLM runs with ignore_eos to match)."""
    out = []
    with torch.no_grad():
        for ids in prompts:
            seq = torch.tensor([ids])
            for _ in range(n):
                nxt = model(seq).logits[0, -1].argmax()
                seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
            out.append(seq[0, len(ids):].tolist())
    return out


def _vllm_greedy(model_dir, prompts) -> list[list[int]]:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(model_dir), json.dumps(prompts), str(NEW_TOKENS)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TOKENS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("TOKENS "):])


def test_lora_run_exports_merged_registers_and_loads_in_transformers_and_vllm(ray_cluster, home, tmp_path, capsys):
    uri = f"sqlite:///{home}/mlflow.db"
    result = run_train_job(load_config(None, TRAIN + [f"tracking.uri={uri}"]))
    ckpt = home / "runs" / "exp" / "checkpoint_000003"
    assert (ckpt / "export" / "adapter_config.json").is_file()
    out = tmp_path / "merged"
    assert main(["export", result.run_id, str(out), "--register", "tiny-sft", "--tracking-uri", uri]) == 0
    assert "registered models:/tiny-sft/1" in capsys.readouterr().out

    # transformers: the merged dir alone answers as base + unmerged adapter (16 prompts)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template is not None and not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    prompts = _prompts(tok)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama"), dtype=torch.float32).eval()
    base_answers = _greedy(base, prompts)
    unmerged = PeftModel.from_pretrained(base, str(ckpt / "export")).eval()
    want = _greedy(unmerged, prompts)
    got = _greedy(merged, prompts)
    assert got == want
    assert got != base_answers  # 3 steps at lr 3e-2 moved the model: the comparison is not vacuous
    # vLLM (vllm-cpu, fp32) loads the same dir and decodes the same tokens
    assert _vllm_greedy(out, prompts) == got

    lineage = json.loads((out / "tunefleet_export.json").read_text())
    assert lineage["run_id"] == result.run_id and lineage["checkpoint_step"] == 3
    assert lineage["kind"] == "lora-merged" and lineage["registered"] == "models:/tiny-sft/1"

    client = MlflowClient(uri)
    mv = client.get_model_version("tiny-sft", "1")
    run = client.get_run(result.run_id)
    assert mv.run_id == result.run_id and mv.source == f"runs:/{result.run_id}/exported/checkpoint_000003"
    assert mv.tags["tunefleet.parent"] == "tiny-llama" and mv.tags["tunefleet.checkpoint_step"] == "3"
    assert json.loads(mv.tags["tunefleet.dataset_digests"])["train"] == run.data.tags["dataset.train.digest"]
    assert mv.tags["tunefleet.objective_metric"] == "eval/accuracy_after"
    assert float(mv.tags["tunefleet.objective"]) == run.data.metrics["eval/accuracy_after"]
    logged = {a.path for a in client.list_artifacts(result.run_id, "exported/checkpoint_000003")}
    assert "exported/checkpoint_000003/MLmodel" in logged  # an MLflow model, not loose files

    assert main(["models", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out.splitlines()
    row = [ln for ln in table if ln.startswith("tiny-sft")]
    assert len(row) == 1 and row[0].split()[:5] == ["tiny-sft", "1", result.run_id, "3", "tiny-llama"]

    # a corrupt checkpoint is refused, naming the file
    (ckpt / "export" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    assert main(["export", result.run_id, str(tmp_path / "again"), "--checkpoint", "3", "--tracking-uri", uri]) == 2
    assert "refusing checkpoint 3: corrupt" in capsys.readouterr().err
