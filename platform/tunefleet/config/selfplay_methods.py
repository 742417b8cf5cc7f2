"""Self-play and self-improvement methods (`algorithm.type`: spin, s3ft, ssr, rft,
iterative_dpo). Imports neither torch nor ray.

A self-play method is not a loss: each iteration generates from model_t, builds a dataset
(algorithms/selfplay.py) and trains model_{t+1} with an ordinary method, which the variant
names in `train_algorithm()` (SPIN and iterative DPO train with DPO; S3FT, SSR and RFT with SFT).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from tunefleet.config.loader import ConfigError, check
from tunefleet.config.loader import dotted as _p
from tunefleet.config.preference import DpoConfig
from tunefleet.config.schema import AlgorithmConfig, SftConfig
from tunefleet.config.selfplay import JUDGE_TYPES

MODEL_JUDGES = ("reward_model", "llm_judge")


@dataclass(frozen=True)
class SelfPlayAlgorithm(AlgorithmConfig):
    """Base of the self-play variants: run by the self-play driver, not the train job."""

    JOB: ClassVar[str] = "selfplay"
    USES_JUDGE: ClassVar[bool] = True
    JUDGES: ClassVar[tuple[str, ...]] = JUDGE_TYPES  # judge types the method accepts
    MIN_SAMPLES: ClassVar[int] = 1

    def train_algorithm(self) -> AlgorithmConfig:
        """The ordinary method each iteration trains with."""
        return SftConfig()


@dataclass(frozen=True)
class SpinConfig(SelfPlayAlgorithm):
    """SPIN: chosen = gold, rejected = model_t's sample, reference = model_t; DPO loss."""

    USES_JUDGE: ClassVar[bool] = False
    type: Literal["spin"] = "spin"
    beta: float = 0.1

    def validate(self, path: str) -> None:
        check(self.beta > 0, _p(path, "beta"), self.beta, "> 0")

    def train_algorithm(self) -> AlgorithmConfig:
        return DpoConfig(beta=self.beta)


@dataclass(frozen=True)
class S3ftConfig(SelfPlayAlgorithm):
    """S3FT: train on model_t's own answer when the judge finds it equivalent to the gold,
    else on the gold; `paraphrase`: try model_t's paraphrase of the gold before the gold."""

    type: Literal["s3ft"] = "s3ft"
    paraphrase: bool = False


@dataclass(frozen=True)
class SsrConfig(S3ftConfig):
    """SSR: the S3FT rule with a model judge (llm_judge or reward_model)."""

    JUDGES: ClassVar[tuple[str, ...]] = MODEL_JUDGES
    type: Literal["ssr"] = "ssr"


@dataclass(frozen=True)
class RftConfig(SelfPlayAlgorithm):
    """RFT / STaR: SFT on the gold answers plus model_t's verified distinct correct samples."""

    type: Literal["rft"] = "rft"
    include_gold: bool = True


@dataclass(frozen=True)
class IterativeDpoConfig(SelfPlayAlgorithm):
    """Iterative DPO: per prompt the best vs the worst of k samples by the judge's score,
    kept when they differ by at least `min_margin`."""

    MIN_SAMPLES: ClassVar[int] = 2
    type: Literal["iterative_dpo"] = "iterative_dpo"
    beta: float = 0.1
    min_margin: float = 0.5

    def validate(self, path: str) -> None:
        check(self.beta > 0, _p(path, "beta"), self.beta, "> 0")
        check(self.min_margin >= 0, _p(path, "min_margin"), self.min_margin, ">= 0")

    def train_algorithm(self) -> AlgorithmConfig:
        return DpoConfig(beta=self.beta)


SELFPLAY_CONFIGS: dict[str, type] = {
    "spin": SpinConfig, "s3ft": S3ftConfig, "ssr": SsrConfig, "rft": RftConfig, "iterative_dpo": IterativeDpoConfig,
}


def validate_selfplay(cfg) -> None:
    """Cross-section checks of a self-play config (Config.validate calls it)."""
    algo, sp = cfg.algorithm, cfg.selfplay
    if algo.USES_JUDGE and sp.judge.type not in algo.JUDGES:
        raise ConfigError("selfplay.judge.type", f"bad value {sp.judge.type!r} for algorithm.type={algo.type}; "
                          f"allowed: {', '.join(algo.JUDGES)}")
    if sp.samples_per_prompt < algo.MIN_SAMPLES:
        raise ConfigError("selfplay.samples_per_prompt", f"bad value {sp.samples_per_prompt} for algorithm.type="
                          f"{algo.type}; allowed: >= {algo.MIN_SAMPLES}")
    if not cfg.eval.suites:
        raise ConfigError("eval.suites", "empty; a self-play run promotes by its objective, so it needs at least "
                          "one suite (e.g. [arith:2])")
    if cfg.data.packing:
        raise ConfigError("data.packing", "bad value True for a self-play method; allowed: false")
    # Every iteration is an ordinary run of the method it trains with: check that one too.
    iteration_config(cfg, cfg.model.name, "<generated>.parquet", "check").validate("")


def iteration_config(cfg, model: str, data_path: str, name: str):
    """The ordinary training run of one iteration: model_t (`model`), the generated data at
    `data_path`, the method's training algorithm; rows that fail tokenisation are skipped
    and counted (data/bad_rows) rather than failing the iteration."""
    data = replace(cfg.data, task=None, path=data_path, eval_path=None, on_bad_row="skip")
    # Step 0 scores model_t: the baseline its successor must not fall below.
    evals = replace(cfg.eval, before=True)
    return replace(cfg, model=replace(cfg.model, name=model), data=data, algorithm=cfg.algorithm.train_algorithm(),
                   eval=evals, run=replace(cfg.run, name=name))
