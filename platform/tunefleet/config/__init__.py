"""Typed, frozen configs from YAML plus dotted overrides. Imports neither torch nor ray."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunefleet.config.loader import ConfigError, apply_overrides, build, parse_yaml, read_yaml_file, to_dict
from tunefleet.config.preference import PREFERENCE_CONFIGS
from tunefleet.config.rewards import BUILTIN_REWARDS, RewardSpec
from tunefleet.config.rl import RL_CONFIGS
from tunefleet.config.rollout import RolloutConfig
from tunefleet.config.schema import (
    ALGORITHM_CONFIGS,
    AlgorithmConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    ReferenceConfig,
    RunSection,
    SftConfig,
    TrackingConfig,
    TrainerConfig,
)
from tunefleet.config.selfplay_methods import SELFPLAY_CONFIGS

ALGORITHM_CONFIGS.update(PREFERENCE_CONFIGS)
ALGORITHM_CONFIGS.update(RL_CONFIGS)
ALGORITHM_CONFIGS.update(SELFPLAY_CONFIGS)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML file (or nothing), apply `a.b=c` overrides, and validate everything.

    Raises ConfigError naming the dotted field, the bad value and what is allowed.
    """
    data = read_yaml_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def config_from_dict(data: dict) -> Config:
    """Validate a plain nested dict into a Config."""
    return build(Config, data)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML (logged as an MLflow artifact, reloadable as is)."""
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "ALGORITHM_CONFIGS", "AlgorithmConfig", "BUILTIN_REWARDS", "RewardSpec", "RolloutConfig", "CheckpointConfig",
    "Config", "ConfigError", "DataConfig", "EvalConfig", "LoraConfig", "ModelConfig", "ReferenceConfig", "RunSection",
    "SftConfig", "TrackingConfig", "TrainerConfig",
    "config_from_dict", "dump_yaml", "load_config", "parse_yaml", "to_dict",
]
