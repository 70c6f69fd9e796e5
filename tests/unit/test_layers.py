"""The import contract (pyproject.toml's [tool.importlinter], run by `make lint`)
holds on the tree, and breaks when a forbidden import is added: a copy of the
packages, one line added, checked by the real lint-imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["tests", "benchmarks", "gateway", "compressed_models", "loadtest", "backends", "leanhttp"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy's packages before the installed ones
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("backends/base.py", "import gateway.config", "Layers point down"),  # an engine importing the gateway
        ("loadtest/stats.py", "import backends.base", "client of any server"),
        ("compressed_models/results.py", "import loadtest.stats", "Layers point down"),  # siblings stay apart
        ("gateway/router.py", "import backends.llamacpp.engine", "only through the registry"),
        ("backends/vllm/backend.py", "import backends.llamacpp.engine", "do not reach into each other"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tree: Path, module: str, line: str, broken: str) -> None:
    assert lint(tree).returncode == 0  # the copy as it is: every contract kept
    add_line(tree / module, line)
    result = lint(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and broken in " ".join(result.stdout.split()), result.stdout
