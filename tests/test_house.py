"""The house: the layer contract of pyproject.toml holds, and an import that runs up the
layers breaks it (lint-imports, as make lint runs it)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).parent / "lint-imports")


def _lint(tree: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT, "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the package's sources and the contract (no build products)."""
    tree = tmp_path_factory.mktemp("house")
    shutil.copy(ROOT / "pyproject.toml", tree)
    shutil.copytree(
        ROOT / "contnet", tree / "contnet", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    return tree


@pytest.mark.skipif(not pathlib.Path(LINT).exists(), reason="import-linter is not installed")
def test_the_layers_run_one_way(tree):
    done = _lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.skipif(not pathlib.Path(LINT).exists(), reason="import-linter is not installed")
@pytest.mark.parametrize(
    "where, line",
    [
        ("ops/upward.py", "from ..models import ContinuousNet\n"),  # the bottom reaching up
        ("nn/upward.py", "from ..integrate import odeint\n"),  # siblings
        ("training/upward.py", "from ..evaluation import compress\n"),  # siblings
        ("models/upward.py", "from ..training import train\n"),
    ],
)
def test_an_upward_import_breaks_the_contract(tree, where, line):
    module = tree / "contnet" / where
    module.write_text(line)
    try:
        done = _lint(tree)
    finally:
        module.unlink()
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout + done.stderr
