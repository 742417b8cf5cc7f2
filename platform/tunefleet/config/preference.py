"""Configs of the offline preference methods (the `algorithm:` variants). Defaults live here.

Each class declares what the loop needs (batch layout, reference, value head) as ClassVars,
so that nothing outside algorithms/ and config/ branches on a method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from tunefleet.config.loader import check
from tunefleet.config.schema import (
    AlgorithmConfig,
    _p,  # dotted path of a field
)


@dataclass(frozen=True)
class DpoConfig(AlgorithmConfig):
    """-log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)])."""

    BATCH: ClassVar[str] = "pairs"
    NEEDS_REFERENCE: ClassVar[bool] = True
    type: Literal["dpo"] = "dpo"
    beta: float = 0.1

    def validate(self, path: str) -> None:
        check(self.beta > 0, _p(path, "beta"), self.beta, "> 0")


@dataclass(frozen=True)
class CdpoConfig(DpoConfig):
    """DPO with label smoothing `eps` (conservative DPO)."""

    type: Literal["cdpo"] = "cdpo"
    eps: float = 0.1

    def validate(self, path: str) -> None:
        super().validate(path)
        check(0 <= self.eps < 0.5, _p(path, "eps"), self.eps, "0 <= eps < 0.5")


@dataclass(frozen=True)
class IpoConfig(DpoConfig):
    """Squared loss on the length-averaged margin minus 1/(2 beta)."""

    type: Literal["ipo"] = "ipo"


@dataclass(frozen=True)
class SimpoConfig(AlgorithmConfig):
    """Length-normalised log-probs with margin gamma; no reference model."""

    BATCH: ClassVar[str] = "pairs"
    type: Literal["simpo"] = "simpo"
    beta: float = 2.0
    gamma: float = 1.0

    def validate(self, path: str) -> None:
        check(self.beta > 0, _p(path, "beta"), self.beta, "> 0")
        check(self.gamma >= 0, _p(path, "gamma"), self.gamma, ">= 0")


@dataclass(frozen=True)
class OrpoConfig(AlgorithmConfig):
    """NLL(chosen) + lam * odds-ratio loss; no reference. (`lam`: `lambda` is a keyword.)"""

    BATCH: ClassVar[str] = "pairs"
    type: Literal["orpo"] = "orpo"
    lam: float = 0.1

    def validate(self, path: str) -> None:
        check(self.lam >= 0, _p(path, "lam"), self.lam, ">= 0")


@dataclass(frozen=True)
class KtoConfig(AlgorithmConfig):
    """Unpaired desirable/undesirable rows against a KL baseline from mismatched pairs."""

    BATCH: ClassVar[str] = "kto"
    NEEDS_REFERENCE: ClassVar[bool] = True
    # The KL baseline scores mismatched pairs formed per batch: no pass can precompute them.
    REFERENCE_MODES: ClassVar[tuple[str, ...]] = ("live",)
    # The KL baseline pairs each prompt with another row's completion (over the step's batch,
    # data/batching.py; this floor dates from per-micro-batch pairs and could become 1).
    MIN_MICRO_BATCH: ClassVar[int] = 2
    type: Literal["kto"] = "kto"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def validate(self, path: str) -> None:
        check(self.beta > 0, _p(path, "beta"), self.beta, "> 0")
        check(self.desirable_weight > 0, _p(path, "desirable_weight"), self.desirable_weight, "> 0")
        check(self.undesirable_weight > 0, _p(path, "undesirable_weight"), self.undesirable_weight, "> 0")


@dataclass(frozen=True)
class RewardModelConfig(AlgorithmConfig):
    """Bradley-Terry on a scalar value head."""

    BATCH: ClassVar[str] = "pairs"
    VALUE_HEAD: ClassVar[bool] = True
    type: Literal["reward_model"] = "reward_model"
    center_rewards_coef: float = 0.0

    def validate(self, path: str) -> None:
        check(self.center_rewards_coef >= 0, _p(path, "center_rewards_coef"), self.center_rewards_coef, ">= 0")


PREFERENCE_CONFIGS: dict[str, type] = {
    "dpo": DpoConfig, "cdpo": CdpoConfig, "ipo": IpoConfig, "simpo": SimpoConfig, "orpo": OrpoConfig,
    "kto": KtoConfig, "reward_model": RewardModelConfig,
}
