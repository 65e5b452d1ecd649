"""A plain (non-editable) install: the package alone, outside the checkout, builds its
extension, finds its activation table and runs the benchmark command from any folder."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_plain_install_runs_from_any_folder(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "CONTNET_CUDA": "0", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    build = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "--target", str(site), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args):
        return subprocess.run(
            [sys.executable, *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    where = run(
        "-c",
        "import contnet; print(contnet.__file__, contnet.ops.backend(), contnet.ops.ACT_CODES)",
    )
    assert where.returncode == 0, where.stderr[-4000:]
    assert str(site) in where.stdout and "extension (cpu" in where.stdout, where.stdout
    assert "'softplus': 5" in where.stdout  # the activation table installed beside the code
    for suite in ("ops", "block", "inference", "backprop"):
        help_ = run("-m", "contnet", "bench", suite, "--help")
        assert help_.returncode == 0 and f"usage: contnet bench {suite}" in help_.stdout, (
            help_.stderr
        )
