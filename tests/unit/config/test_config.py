"""Config loading: every broken config fails with exit 2 and names the field."""

import subprocess
import sys
from pathlib import Path

import pytest

from tunefleet.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]
GOOD = """
model: {name: tiny-llama}
data: {task: arith}
algorithm: {type: sft}
trainer: {num_workers: 2, max_steps: 5, batch_size: 4, micro_batch_size: 2}
"""


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_good_config_and_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["trainer.lr=3e-4", "model.lora.r=8", "checkpoint.every_steps=2"])
    assert cfg.trainer.lr == 3e-4 and cfg.trainer.num_workers == 2
    assert cfg.model.lora.r == 8 and cfg.model.lora.alpha == 32
    assert cfg.checkpoint.every_steps == 2 and cfg.algorithm.type == "sft"
    assert cfg.trainer.grad_accum == 1


BROKEN = [
    ("unknown key", GOOD + "trainer2: {}\n", [], "trainer2", "did you mean 'trainer'"),
    ("near-miss key", GOOD, ["trainer.max_step=3"], "trainer.max_step", "did you mean 'max_steps'"),
    ("wrong type", GOOD, ["trainer.num_workers=two"], "trainer.num_workers", "expected int"),
    ("bad enum", GOOD, ["algorithm.type=dpx"], "algorithm.type", "did you mean 'dpo'"),
    ("bad enum literal", GOOD, ["trainer.lr_schedule=cosin"], "trainer.lr_schedule", "did you mean 'cosine'"),
    ("negative lr", GOOD, ["trainer.lr=-0.1"], "trainer.lr", "> 0"),
    ("missing model", "data: {task: arith}\n", [], "model", "missing required field"),
    ("missing model name", "model: {}\n", [], "model.name", "missing required field"),
    ("malformed yaml", "model: {name: tiny-llama\ntrainer: [\n", [], "malformed YAML", "c.yaml:"),
    ("batch not divisible", GOOD, ["trainer.batch_size=5"], "trainer.batch_size", "multiple of"),
    ("bad on_bad_row", GOOD, ["data.on_bad_row=ignore"], "data.on_bad_row", "'error' | 'skip'"),
    ("task and path", GOOD, ["data.task=reverse", "data.path=x.jsonl"], "data.task", "exactly one"),
    ("kto micro-batch", GOOD, ["algorithm.type=kto", "reference.mode=live", "trainer.micro_batch_size=1",
                               "trainer.batch_size=2"], "trainer.micro_batch_size", ">= 2"),
    ("kto precompute", GOOD, ["algorithm.type=kto", "reference.mode=precompute"], "reference.mode", "allowed: live"),
    ("elastic range order", GOOD, ["trainer.num_workers=[2, 1]"], "trainer.num_workers", "1 <= min <= max"),
    ("elastic batch", GOOD, ["trainer.num_workers=[1, 3]"], "trainer.batch_size", "3 * 2"),
    ("rl batch vs group", GOOD, ["algorithm.type=grpo", "algorithm.group_size=3"], "trainer.batch_size",
     "algorithm.group_size = 3"),
    ("grpo group of one", GOOD, ["algorithm.type=grpo", "algorithm.group_size=1"], "algorithm.group_size", ">= 2"),
    ("rl file needs rewards", GOOD, ["algorithm.type=rloo", "data.task=null", "data.path=p.jsonl"], "rewards",
     "at least one reward"),
    ("bad reward type", GOOD, ["algorithm.type=grpo", "rewards=[{type: exact}]"], "rewards[0].type",
     "module:function"),
    ("rl greedy", GOOD, ["algorithm.type=grpo", "algorithm.temperature=0"], "algorithm.temperature", "> 0"),
    ("rl prompt room", GOOD, ["algorithm.type=grpo", "algorithm.max_new_tokens=4096"], "algorithm.max_new_tokens",
     "rollout.max_model_len"),
    ("bad lora sync", GOOD, ["rollout.lora_sync=merge"], "rollout.lora_sync", "did you mean 'merged'"),
]


@pytest.mark.parametrize("label,text,overrides,field,hint", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_configs_name_the_field(tmp_path, label, text, overrides, field, hint):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), overrides)
    msg = str(info.value)
    assert field in msg and hint in msg, msg


def test_rl_and_elastic_configs(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["algorithm.type=grpo", "algorithm.kl_beta=0.04",
                                               "trainer.num_workers=[1, 2]", "rewards=[{type: 'mymod:score'}]"])
    assert cfg.algorithm.NEEDS_REFERENCE and cfg.reference_mode == "live"  # the method's default
    assert cfg.trainer.elastic and (cfg.trainer.min_workers, cfg.trainer.max_workers) == (1, 2)
    assert cfg.trainer.grad_accum_for(1) == 2 and cfg.trainer.grad_accum == 1
    assert cfg.rewards[0].type == "mymod:score" and cfg.rewards[0].weight == 1.0
    plain = load_config(_write(tmp_path, GOOD), ["algorithm.type=rloo"])
    assert not plain.algorithm.NEEDS_REFERENCE and plain.reference_mode is None
    assert load_config(_write(tmp_path, GOOD), ["algorithm.type=dpo"]).reference_mode == "precompute"


def _validate(*args):
    env = {"PYTHONPATH": str(ROOT / "platform"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "tunefleet.cli.main", "validate", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_validate_cli_exit_codes(tmp_path):
    good = _write(tmp_path, GOOD)
    ok = _validate(str(good))
    assert ok.returncode == 0, ok.stderr
    bad = _validate(str(good), "trainer.lr=-1")
    assert bad.returncode == 2 and "trainer.lr" in bad.stderr and "-1" in bad.stderr


def test_sample_configs_validate():
    for path in sorted((ROOT / "jobs" / "configs").glob("*.yaml")):
        load_config(path, ["model.name=tiny-llama"])
    load_config(ROOT / "platform" / "tunefleet" / "cli" / "demo.yaml")


def test_config_package_imports_without_torch_or_ray():
    code = "import sys, tunefleet.config, tunefleet.cli.main; bad = {'torch', 'ray', 'vllm'} & set(sys.modules); " \
           "assert not bad, bad"
    res = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(ROOT / "platform")},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


TRUNCATED_SAMPLING = [(algo, override, field)
                      for algo in ("grpo", "rloo", "reinforce_pp")
                      for override, field in (("algorithm.top_p=0.9", "algorithm.top_p"),
                                              ("algorithm.top_k=20", "algorithm.top_k"))]


@pytest.mark.parametrize("algo,override,field", TRUNCATED_SAMPLING, ids=[f"{a}-{f}" for a, _, f in TRUNCATED_SAMPLING])
def test_rl_refuses_truncated_sampling(tmp_path, algo, override, field):
    """top-p / top-k sampling renormalises over a kept set the trainer cannot rebuild exactly,
    so the importance ratio would compare two distributions: refused, naming field, value, reason."""
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, GOOD), [f"algorithm.type={algo}", override])
    msg = str(info.value)
    assert field in msg and override.split("=")[1] in msg and "importance ratio" in msg, msg


def test_rl_sampling_temperature_is_what_the_trainer_scores_at(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["algorithm.type=grpo", "algorithm.temperature=0.7"])
    assert cfg.algorithm.policy_temperature == 0.7 and cfg.algorithm.top_p == 1.0 and cfg.algorithm.top_k == 0
