"""Merging a LoRA adapter into its base: the merged model computes what base + adapter does."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunefleet.models import apply_lora, load_model, resolve_model, save_adapter
from tunefleet.models.export import ExportError, adapter_digest, export_hf_dir, merge_adapter
from tunefleet.models.tiny import build_tiny_tokenizer, tiny_llama_config

IDS = torch.tensor([[5, 17, 200, 3, 99, 42, 7, 1], [250, 8, 8, 64, 11, 120, 33, 90]])


def _random_adapter(base_dir, dest, targets="all-linear"):
    """A LoRA adapter with random (non-zero) A and B, so merging changes every adapted layer."""
    torch.manual_seed(1)
    peft = apply_lora(load_model(base_dir), r=4, alpha=8, dropout=0.0, target_modules=targets)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    save_adapter(peft, dest)
    with torch.no_grad():
        want = peft.eval()(IDS).logits
    return want


def _tied_base(dest):
    """tiny-llama's architecture with tied embeddings (as SmolLM2 has)."""
    tok = build_tiny_tokenizer()
    cfg = tiny_llama_config(tok)
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_merged_model_equals_base_plus_adapter(tmp_path, tied):
    base = _tied_base(tmp_path / "base") if tied else resolve_model("tiny-llama")
    want = _random_adapter(base, tmp_path / "adapter")
    out = merge_adapter(base, tmp_path / "adapter", tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(IDS).logits
    plain = load_model(base).eval()
    with torch.no_grad():
        before = plain(IDS).logits
    assert (want - before).abs().max() > 1e-2  # the adapter really changes the outputs
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    assert merged.config.tie_word_embeddings is tied
    if tied:  # one tensor, not two equal copies that drift apart on the next fine-tune
        assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and not [n for n in names if n.endswith((".bin", ".pt", ".gguf"))]
    assert "adapter_config.json" not in names  # a plain model, not a PEFT dir
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(base).chat_template is not None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_export_hf_dir_writes_lineage_and_merges_or_copies(tmp_path):
    base = resolve_model("tiny-llama")
    _random_adapter(base, tmp_path / "adapter", targets=["q_proj", "v_proj"])
    lineage = {"run_id": "r1", "checkpoint_step": 3, "base_model": "tiny-llama"}
    out = export_hf_dir(tmp_path / "adapter", base, tmp_path / "out", lineage)
    info = json.loads((out / "tunefleet_export.json").read_text())
    assert info["run_id"] == "r1" and info["checkpoint_step"] == 3 and info["kind"] == "lora-merged"
    assert info["adapter_digest"] == adapter_digest(tmp_path / "adapter") and len(info["adapter_digest"]) == 64
    # a full-weights export is copied as it is (no base needed), also with lineage
    full = export_hf_dir(out, None, tmp_path / "copy", {"run_id": "r2"})
    assert json.loads((full / "tunefleet_export.json").read_text())["kind"] == "full"
    assert (full / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_export_refuses_a_non_empty_destination_and_an_adapter_without_base(tmp_path):
    base = resolve_model("tiny-llama")
    _random_adapter(base, tmp_path / "adapter", targets=["q_proj"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_hf_dir(tmp_path / "adapter", base, tmp_path / "busy", {})
    with pytest.raises(ExportError, match="base model"):
        export_hf_dir(tmp_path / "adapter", None, tmp_path / "out", {})
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
