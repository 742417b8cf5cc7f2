"""The tiny random Llama: determinism, speed, tokenizer and chat template."""

import time

import torch

from tunefleet.models import build_tiny_llama, load_model, load_tokenizer


def test_build_is_fast_and_deterministic(tmp_path):
    start = time.perf_counter()
    build_tiny_llama(tmp_path / "a")
    elapsed = time.perf_counter() - start
    build_tiny_llama(tmp_path / "b")
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a == b
    assert elapsed < 2.0, f"tiny build took {elapsed:.2f}s"


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llama(tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_model_shape_and_forward(tmp_path):
    build_tiny_llama(tmp_path)
    model = load_model(tmp_path)
    tok = load_tokenizer(tmp_path)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (2, 64, 128)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 32)
    assert cfg.max_position_embeddings == 1024 and not cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tok) == 259
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    ids = tok("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], cfg.vocab_size)
    assert torch.isfinite(logits).all()


def test_tokenizer_round_trip(tmp_path):
    build_tiny_llama(tmp_path)
    tok = load_tokenizer(tmp_path)
    text = "Héllo, wörld! 🚀\n\ttabs and  spaces"
    ids = tok(text).input_ids
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no BOS
    assert tok.decode(ids) == text
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|pad|>")
    assert tok.padding_side == "right"


def test_chat_template(tmp_path):
    build_tiny_llama(tmp_path)
    tok = load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == text
