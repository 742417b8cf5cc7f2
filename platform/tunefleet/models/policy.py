"""The trainable policy as the training loop sees it: a causal LM (optionally with a LoRA
adapter), wrapped so that forward returns per-token log-probs and the vocabulary projection
runs only on the positions that count towards the loss.

Why the wrapper: the LM head of a small model is a large share of its FLOPs (SmolLM2-135M:
28M of 135M parameters at vocab 49,152); chat SFT masks most positions (the prompt), so
projecting only the target positions saves a fifth or more of each step. Sharding the
wrapper as the FSDP2 root keeps the embedding / head all-gather inside its forward hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IGNORE = -100
ENTROPY_CHUNK = 128  # rows of logits per entropy chunk (see token_entropy)


def token_entropy(logits: torch.Tensor, lse: torch.Tensor, chunk: int = ENTROPY_CHUNK) -> torch.Tensor:
    """H = -sum_v p_v log p_v per row: logits [N, V] float, lse [N] = logsumexp(logits) -> [N].

    No gradients (a metric), and `chunk` rows at a time so that only [chunk, V] temporaries
    exist next to the logits (vocab 49,152: 2 x 24 MiB at 128 rows)."""
    with torch.no_grad():
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], chunk):
            logp = logits[i:i + chunk].float() - lse[i:i + chunk].float().unsqueeze(-1)
            out[i:i + chunk] = -(logp.exp() * logp).sum(-1)
        return out


class TokenLogpModel(nn.Module):
    """Wraps an HF causal LM (or a PeftModel around one).

    `temperature`: log-probs are those of softmax(logits / temperature). Online RL samples at
    a temperature, and its importance ratio pi / pi_behaviour must compare the distribution
    the tokens were drawn from on both sides (the engines return log-probs after the same
    scaling, rollout/engine.py); 1.0 is the plain model (SFT, preference methods).
    """

    def __init__(self, lm: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.lm = lm
        self.temperature = float(temperature)

    def _core(self) -> nn.Module:
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return base

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, entropy: bool = False):
        """input_ids, labels, position_ids: [B, T] (labels = next token or -100).

        Returns logps [B, T] float32: log p(labels[b, t] | input_ids[b, :t+1]), 0 where
        labels == -100; with `entropy`, the pair (logps, entropies [B, T]): the entropy of
        the whole next-token distribution at each target position (0 elsewhere, no grad).
        Right padding needs no attention mask under a causal mask, and position_ids that
        restart at 0 make transformers build a block-diagonal (packed) mask.
        """
        core = self._core()
        hidden = core.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        sel = labels != IGNORE
        logits = core.get_output_embeddings()(hidden[sel]).float()  # [N, V] only where it counts
        if self.temperature != 1.0:
            logits = logits / self.temperature
        targets = labels[sel].unsqueeze(-1)
        lse = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets).squeeze(-1) - lse
        out = torch.zeros(labels.shape, dtype=torch.float32, device=logp.device).masked_scatter(sel, logp)
        if not entropy:
            return out
        ent = token_entropy(logits.detach(), lse.detach())
        return out, torch.zeros(labels.shape, dtype=torch.float32, device=ent.device).masked_scatter(sel, ent)


class ValueModel(TokenLogpModel):
    """A sequence-classification LM (scalar `score` head): forward returns one value per
    sequence, read at the last target token (the end-of-turn token of the response)."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, labels [B, T] -> values [B] (float32)."""
        core = self._core()
        hidden = core.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
        # labels[t] holds token t+1, so the last scored token sits one past the last label.
        last = torch.where(labels != IGNORE, positions, -1).max(dim=1).values + 1
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return core.score(picked).squeeze(-1).float()


@dataclass
class Policy:
    """What the loop holds: the module to call, and the parameters to optimise."""

    module: TokenLogpModel
    is_lora: bool
    sharded: bool
    value_head: bool = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.module.named_parameters() if p.requires_grad}


def shard(module: TokenLogpModel) -> None:
    """FSDP2: one group per decoder layer, then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in module._core().get_decoder().layers:
        fully_shard(layer)
    fully_shard(module)


def _load_value_model(model_dir: str, dtype: str):
    from transformers import AutoModelForSequenceClassification

    from tunefleet.models.registry import load_tokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    lm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch_dtype,
                                                            attn_implementation="sdpa")
    lm.config.pad_token_id = load_tokenizer(model_dir).pad_token_id
    return lm


def build_policy(model_dir: str, dtype: str, lora, device: torch.device, world_size: int,
                 value_head: bool = False, trainable: bool = True, temperature: float = 1.0) -> Policy:
    """Load the model from `model_dir`, add LoRA if `lora` (a LoraConfig) is set, move it to
    `device`, and shard it with FSDP2 when `world_size > 1`. `value_head`: a scalar-head
    model (reward models); `trainable=False`: a frozen copy (a live reference);
    `temperature`: the one the log-probs are taken at (TokenLogpModel; not for value heads)."""
    from tunefleet.models.registry import load_model

    lm = _load_value_model(model_dir, dtype) if value_head else load_model(model_dir, dtype=dtype)
    lm.config.use_cache = False
    if lora is not None and trainable:
        from tunefleet.models.lora import apply_lora

        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        lm = apply_lora(lm, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=target,
                        modules_to_save=["score"] if value_head else None)
    if not trainable:
        lm.requires_grad_(False)
    module = (ValueModel(lm) if value_head else TokenLogpModel(lm, temperature)).to(device)
    if world_size > 1:
        shard(module)
    return Policy(module=module, is_lora=lora is not None and trainable, sharded=world_size > 1,
                  value_head=value_head)
