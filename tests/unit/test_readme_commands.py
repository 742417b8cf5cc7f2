"""Every `tunefleet ...` and `ray job submit ...` command in README.md works as written.

`run`/`validate` commands go through the same validation as `tunefleet validate` (with the
tiny model, so nothing is loaded); the others must parse with the CLI's own argparse, so a
renamed flag fails here. No Ray, no model: this runs in well under a second.
"""

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from tunefleet.cli.main import _parser, main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PREFIXES = (".venv/bin/tunefleet ", "tunefleet ", "ray job submit ")
TINY = ["model.name=tiny-llama"]
# Overrides that name a user file; the test writes a small valid one and points at it.
FILE_KEYS = ("data.path", "data.eval_path")


def readme_commands(text: str) -> list[str]:
    """The command lines of README.md's fenced code blocks that start with PREFIXES, with
    backslash continuations joined and `<placeholders>` made single words."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if line.startswith(PREFIXES):
                commands.append(re.sub(r"<[A-Za-z][\w .-]*>", "PLACEHOLDER", line))
    return commands


def cli_argv(command: str) -> list[str]:
    """The argv that `tunefleet.cli.main.main` receives for a README command."""
    words = shlex.split(command, comments=True)
    if words[:3] == ["ray", "job", "submit"]:
        sep = words.index("--")  # ray's options, then the entrypoint
        opts, entry = words[3:sep], words[sep + 1:]
        if "--runtime-env" in opts:
            assert (ROOT / opts[opts.index("--runtime-env") + 1]).is_file(), command
        assert entry[:2] == ["python", "jobs/run.py"] and (ROOT / entry[1]).is_file(), command
        return ["run", *entry[2:]]  # what jobs/run.py passes on
    return words[1:]


def _with_user_files(argv: list[str], tmp_path: Path) -> list[str]:
    out = []
    for word in argv:
        key, sep, value = word.partition("=")
        if sep and key in FILE_KEYS and value not in ("", "null") and not (ROOT / value).exists():
            row = ({"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}
                   if "chat" in value else {"question": "What is 1 + 1?", "answer": "#### 2"})
            path = tmp_path / Path(value).name
            path.write_text(json.dumps(row) + "\n")
            word = f"{key}={path}"
        out.append(word)
    return out


COMMANDS = readme_commands(README.read_text())


def test_the_readme_has_the_commands_we_expect():
    """Guards the extractor: a README rewrite that hides every command would pass vacuously."""
    argvs = [cli_argv(c) for c in COMMANDS]
    kinds = {a[0] for a in argvs}
    assert {"run", "validate", "score", "generate", "eval", "export", "merge", "models"} <= kinds, kinds
    assert any(c.startswith("ray job submit") for c in COMMANDS)
    assert len([a for a in argvs if a[0] in ("run", "validate") and "--resume" not in a]) >= 6


def test_extractor_joins_continuations_and_placeholders():
    text = "x\n```bash\n  tunefleet run a.yaml x=1 \\\n    'y=[1, 2]'  # note\nkill <pid of it>\n```\n"
    assert readme_commands(text) == ["tunefleet run a.yaml x=1 'y=[1, 2]'  # note"]
    assert cli_argv(readme_commands(text)[0]) == ["run", "a.yaml", "x=1", "y=[1, 2]"]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:90] for c in COMMANDS])
def test_readme_command_works_as_written(command, tmp_path):
    argv = cli_argv(command)
    args = _parser().parse_args(argv)  # a renamed flag or subcommand exits 2 here
    if args.command not in ("run", "validate") or getattr(args, "resume", None):
        return  # score / generate / --resume need a trained run: parsing is what can drift
    argv = _with_user_files(["validate", *argv[1:]], tmp_path) + TINY
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    assert code == 0, f"{command}\n  -> exit {code}: {err.getvalue().strip()}"
