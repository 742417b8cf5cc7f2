"""Campaign files: the conditional space, validation of every method's trials, sampling, grid."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tunefleet.config import ConfigError, config_from_dict
from tunefleet.config.campaign import grid, is_campaign_file, load_campaign, sample, trial_dict

ROOT = Path(__file__).resolve().parents[3]
METHODS, DPO_BETA = ROOT / "jobs" / "campaigns" / "methods.yaml", ROOT / "jobs" / "campaigns" / "dpo_beta.yaml"


@pytest.mark.parametrize("path", [METHODS, DPO_BETA])
def test_shipped_campaigns_validate_with_tiny_llama(path):
    c = load_campaign(path, ["model.name=tiny-llama"])
    assert "model.name=tiny-llama" in c.campaign.overrides
    for method in c.space.methods:
        assert trial_dict(c, method, {})["model"]["name"] == "tiny-llama"


def test_a_method_space_applies_only_when_that_method_is_drawn():
    c = load_campaign(METHODS)
    rng = random.Random(0)
    seen = set()
    for _ in range(40):
        method, values = sample(c, rng)
        seen.add(method)
        assert ("algorithm.beta" in values) == (method == "dpo")
        assert ("algorithm.group_size" in values) == (method == "grpo")
        assert 2e-4 <= values["trainer.lr"] <= 2e-3 and values["model.lora.r"] in (8, 16)
        cfg = config_from_dict(trial_dict(c, method, values))
        assert cfg.algorithm.type == method
    assert seen == {"sft", "dpo", "grpo"}


def test_grid_crosses_choices_and_each_point_is_a_run():
    """dpo_beta: lr {1e-4, 5e-4} x beta {0.01, 0.1, 0.5} = 6 trials."""
    c = load_campaign(DPO_BETA)
    points = grid(c)
    assert len(points) == 6 and {m for m, _ in points} == {"dpo"}
    assert sorted((v["trainer.lr"], v["algorithm.beta"]) for _, v in points) == sorted(
        (lr, b) for lr in (1e-4, 5e-4) for b in (0.01, 0.1, 0.5))
    with pytest.raises(ConfigError, match="loguniform cannot be gridded"):
        grid(load_campaign(METHODS))


@pytest.mark.parametrize(("override", "path", "words"), [
    ("space.methods.dpo.group_size=4", "space.methods.dpo.group_size", "dpo has no hyperparameter 'group_size'"),
    ("space.methods.sfft={}", "space.methods.sfft", "did you mean 'sft'"),
    ("space.methods.dpo.beta={choice: [0.1, -1]}", "space.methods.dpo", "algorithm.beta: bad value -1"),
    ("space.common.trainer.lr={loguniform: [0, 1]}", "space.common.trainer.lr.loguniform", "low > 0"),
    ("space.common.trainer.lr={normal: [0, 1]}", "space.common.trainer.lr", "allowed: a constant or one of"),
    ("data.max_length=2", "campaign.base", "not a valid sft run: data.max_length"),
    ("campaign.scheduler.type=hyperband", "campaign.scheduler.type", "allowed"),
    ("campaign.num_samples=0", "campaign.num_samples", ">= 1"),
])
def test_bad_campaigns_name_the_field(override, path, words):
    with pytest.raises(ConfigError) as err:
        load_campaign(METHODS, [override])
    assert err.value.path == path and words in str(err.value), str(err.value)


def test_validate_cli_reads_campaigns_and_exits_2_on_a_bad_one():
    assert is_campaign_file(METHODS) and not is_campaign_file(ROOT / "jobs" / "configs" / "dpo.yaml")
    ok = subprocess.run([sys.executable, "-m", "tunefleet.cli.main", "validate", str(METHODS), "model.name=tiny-llama"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "campaign methods: methods dpo, grpo, sft" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "tunefleet.cli.main", "validate", str(METHODS),
                          "space.methods.dpo.group_size=4"], capture_output=True, text=True)
    assert bad.returncode == 2 and "dpo has no hyperparameter 'group_size'" in bad.stderr
