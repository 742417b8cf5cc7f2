"""Reward `params` are checked with the config: `tunefleet validate` exits 2 naming the field."""

from pathlib import Path

import pytest

from tunefleet.cli.main import main
from tunefleet.config import ConfigError, load_config

RL = """
model: {name: tiny-llama}
data: {task: arith}
algorithm: {type: grpo, group_size: 2}
trainer: {max_steps: 1, batch_size: 4, micro_batch_size: 2}
"""


def _cfg(tmp_path: Path) -> Path:
    p = tmp_path / "rl.yaml"
    p.write_text(RL)
    return p


BAD_PARAMS = [
    ("misspelt", "{type: format, params: {patern: 'x'}}", "rewards[0].params.patern", "did you mean 'pattern'"),
    ("bad regex", "{type: format, params: {pattern: '[a-'}}", "rewards[0].params.pattern", "not a valid regex"),
    ("regex not a string", "{type: format, params: {pattern: 3}}", "rewards[0].params.pattern", "a regex string"),
    ("missing required", "{type: format}", "rewards[0].params.pattern", "missing required param"),
    ("bad choice", "{type: format, params: {pattern: x, mode: full}}", "rewards[0].params.mode",
     "did you mean 'fullmatch'"),
    ("bool for a bool", "{type: exact_match, params: {normalize: 'yes'}}", "rewards[0].params.normalize",
     "true or false"),
    ("no params at all", "{type: task, params: {strict: true}}", "rewards[0].params.strict",
     "no params"),
    ("negative int", "{type: length_penalty, params: {target_tokens: -1}}", "rewards[0].params.target_tokens",
     ">= 0"),
    ("bool is not an int", "{type: length_penalty, params: {target_tokens: true}}",
     "rewards[0].params.target_tokens", "an int"),
    ("zero scale", "{type: length_penalty, params: {target_tokens: 0}}", "rewards[0].params.scale_tokens",
     "set it when target_tokens is 0"),
    ("reward model path", "{type: reward_model}", "rewards[0].params.path", "missing required param"),
    ("reward model dtype", "{type: reward_model, params: {path: /m, dtype: fp16}}", "rewards[0].params.dtype",
     "'float32' | 'bfloat16'"),
    ("code exec limit", "{type: code_exec, params: {timeout_s: 0}}", "rewards[0].params.timeout_s", "> 0"),
    ("code exec int", "{type: code_exec, params: {memory_mb: 1.5}}", "rewards[0].params.memory_mb", "an int"),
    ("second reward", "{type: task}, {type: math_answer, params: {fallback: false}}",
     "rewards[1].params.fallback", "allowed params: fallback_last_number"),
    ("infinite weight", "{type: task, weight: .inf}", "rewards[0].weight", "a finite number"),
    ("user fn malformed", "{type: 'my mod:fn'}", "rewards[0].type", "module:function"),
    ("user fn no function", "{type: 'mymod:'}", "rewards[0].type", "module:function"),
]


@pytest.mark.parametrize("label,rewards,field,hint", BAD_PARAMS, ids=[b[0] for b in BAD_PARAMS])
def test_bad_reward_params_name_the_field(tmp_path, label, rewards, field, hint):
    with pytest.raises(ConfigError) as info:
        load_config(_cfg(tmp_path), [f"rewards=[{rewards}]"])
    msg = str(info.value)
    assert msg.startswith(field + ":") and hint in msg, msg


def test_validate_cli_exits_2_on_a_misspelt_param(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", str(_cfg(tmp_path)), 'rewards=[{type: format, params: {patern: "x"}}]'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "rewards[0].params.patern" in err and "did you mean 'pattern'" in err, err


def test_validate_cli_exits_2_on_a_bad_regex(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", str(_cfg(tmp_path)), 'rewards=[{type: format, params: {pattern: "(unclosed"}}]'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "rewards[0].params.pattern" in err and "(unclosed" in err, err


def test_good_params_pass_and_user_functions_take_any_params(tmp_path):
    cfg = load_config(_cfg(tmp_path), [
        "rewards=[{type: format, weight: 0.1, params: {pattern: '####', mode: fullmatch}},"
        " {type: length_penalty, params: {target_tokens: 0, scale_tokens: 8}},"
        " {type: reward_model, params: {path: /not/checked/here, batch_size: 2}},"
        " {type: code_exec, params: {timeout_s: 1.5, memory_mb: 128}},"
        " {type: 'pkg.mod:score', params: {anything: [1, 2]}}]"])
    assert [r.type for r in cfg.rewards] == ["format", "length_penalty", "reward_model", "code_exec", "pkg.mod:score"]
    assert cfg.rewards[0].params == {"pattern": "####", "mode": "fullmatch"}  # as given: defaults stay in one place
    assert cfg.rewards[4].params == {"anything": [1, 2]}
