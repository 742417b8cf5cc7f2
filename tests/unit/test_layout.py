"""Layout guards: `platform/` is never a package, layering holds, every module imports."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "platform" / "tunefleet"


def test_platform_is_not_a_package():
    # platform/__init__.py would shadow the stdlib `platform` module in every Ray worker.
    assert not (ROOT / "platform" / "__init__.py").exists()
    import platform

    assert hasattr(platform, "system"), "stdlib platform is shadowed"


@pytest.mark.parametrize("pure", ["algorithms", "config", "data"])
def test_pure_packages_never_import_ray_or_vllm(pure):
    for path in (PKG / pure).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("ray", "vllm"), f"{path}: imports {name}"


def _modules():
    return sorted(m.name for m in pkgutil.walk_packages([str(PKG)], prefix="tunefleet."))


def test_every_module_imports_in_a_fresh_process():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    res = subprocess.run([sys.executable, "-c", code, *_modules()], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_no_algorithm_name_branching_outside_algorithms():
    for path in PKG.rglob("*.py"):
        if "algorithms" in path.parts:
            continue
        text = path.read_text()
        for name in ("sft", "dpo", "grpo", "rloo", "simpo", "orpo", "kto", "spin"):
            assert f'== "{name}"' not in text and f"== '{name}'" not in text, f"{path} branches on {name}"


def test_test_file_names_are_unique():
    # Test folders have no __init__.py, so two test files with one basename collide in pytest.
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
