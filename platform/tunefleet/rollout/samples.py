"""What goes into the rollout engines and what comes out: plain, picklable dataclasses.

Imports no torch, ray or vllm, so trainers, drivers and tests can use them anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

Prompt = str | list[int]  # text, or token ids used as is


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request (a subset of vLLM's SamplingParams).

    `seed`: when set, request `i` samples with seed `seed + i`, so a request retried on
    another engine (after a crash) produces the same samples it would have produced.
    `temperature=0` is greedy decoding.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 64
    min_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self):
        if self.n < 1 or self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"bad sampling settings: {self}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"], d["stop_token_ids"] = list(self.stop), list(self.stop_token_ids)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def request_seed(self, request_id: int) -> int | None:
        return None if self.seed is None else self.seed + request_id


@dataclass(frozen=True)
class Request:
    """One prompt to complete `sampling.n` times; `id` is unique within a pool."""

    id: int
    prompt: Prompt
    sampling: Sampling


@dataclass
class Sample:
    """One completion. token_ids, logprobs: [T] (logprobs[t] = log p(token_ids[t] | prefix)
    under the distribution it was sampled from: softmax(logits / temperature), renormalised
    over the top-p/top-k set when those are on; greedy: softmax(logits))."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str
    version: int


@dataclass
class Rollout:
    """All samples of one request, produced by one engine at one policy `version`.

    prompt_token_ids: [P]; samples: `sampling.n` completions.
    """

    request_id: int
    prompt: Prompt
    prompt_token_ids: list[int]
    samples: list[Sample]
    version: int
    engine: int
    sampling: Sampling = field(default_factory=Sampling)

    @property
    def num_tokens(self) -> int:
        """Generated tokens over all samples."""
        return sum(len(s.token_ids) for s in self.samples)


class RolloutError(RuntimeError):
    """A request that cannot be completed (bad prompt, every engine gone, pool shut down)."""


class SyncError(RuntimeError):
    """A weight sync that was rejected or failed; every engine stays on the old version."""
