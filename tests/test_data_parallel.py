"""Data-parallel training under torchrun (gloo on the CPU): refinement mid-training, the
ranks in step, and NCCL refused with more processes than GPUs."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from contnet import training as train


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [[], ["--stochastic-depth", "0.3"]], ids=["plain", "stochastic-depth"]
)
def test_data_parallel_training_with_refinement(tmp_path, extra):
    """The ranks stay in step (each draws its own drops with stochastic depth; the gradients
    are averaged)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which(
        "torchrun"
    )
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "contnet",
        "train",
        "--epochs",
        "3",
        "--refine-at",
        "1",
        "--widths",
        "4",
        "8",
        "--batch-size",
        "64",
        "--out",
        str(tmp_path),
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    summary = json.loads((tmp_path / "train.json").read_text())
    assert (
        summary["world_size"] == 2
        and summary["weight_spread"] == 0.0
        and summary["buffer_spread"] == 0.0
    )
    assert [h["n_basis"] for h in summary["history"]] == [1, 2, 2]
    assert summary["history"][-1]["train_loss"] < summary["history"][0]["train_loss"]
    payload = train.load_checkpoint(tmp_path / "checkpoint.pt")
    assert len(payload["rng"]["loader_ranks"]) == 2
    assert payload["meta"]["train"]["stochastic_depth"] == (0.3 if extra else 0.0)


def test_nccl_with_more_processes_than_gpus_is_refused(monkeypatch):
    # refused before the process group starts: two NCCL ranks on one GPU fail or hang
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="--device cuda with NCCL needs one GPU per process"):
        train.Distributed("cuda")
