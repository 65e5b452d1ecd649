"""Data-parallel runs under torchrun (gloo, 2 processes) meet faults: a process killed
after a refinement resumes to bitwise the run that was not interrupted; a stalled one
stops the other within --dist-timeout with a message, the last checkpoint intact."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from contnet import training as train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["train", "--epochs", "3", "--refine-at", "1", "--widths", "4", "8"]
ARGS += ["--batch-size", "64", "--no-progress"]


def _torchrun(module, *args, inject=None, timeout=300):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which(
        "torchrun"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    env.pop("CONTNET_INJECT", None)
    if inject:
        env["CONTNET_INJECT"] = inject
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _weights(path):
    payload = train.load_checkpoint(path)
    return payload["model"], payload["optimizer"], payload["meta"]["history"]


@pytest.mark.slow
def test_a_process_killed_after_a_refinement_resumes_bitwise(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = _torchrun("contnet", *ARGS, "--out", str(whole))
    assert r.returncode == 0, r.stderr[-3000:]
    # process 1 is killed as epoch 3 starts: after the refinement (at the start of epoch 2)
    # and the checkpoint of epoch 2
    r = _torchrun("tests.inject", *ARGS, "--out", str(cut), inject="kill:1:3")
    assert r.returncode != 0
    assert train.load_checkpoint(cut / "checkpoint.pt")["meta"]["epoch"] == 1
    r = _torchrun("contnet", *ARGS, "--out", str(cut), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    (a, opt_a, hist_a), (b, opt_b, hist_b) = (
        _weights(whole / "checkpoint.pt"),
        _weights(cut / "checkpoint.pt"),
    )
    assert [h["n_basis"] for h in hist_b] == [1, 2, 2]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for (ka, va), (_, vb) in zip(opt_a["state"].items(), opt_b["state"].items()):
        for name in va:
            assert torch.equal(va[name], vb[name]), (ka, name)
    drop = ("epoch_time_s",)
    strip = lambda hs: [{k: v for k, v in h.items() if k not in drop} for h in hs]  # noqa: E731
    assert strip(hist_a) == strip(hist_b)


@pytest.mark.slow
@pytest.mark.parametrize(
    "inject, message, last_epoch",
    [  # mid-epoch 2 (the checkpoint of epoch 1 stays); before the process group is up
        ("stop:1:2", "did not answer within 5 s (--dist-timeout)", 0),
        ("stop:1:0", "the processes did not all start within 5 s (--dist-timeout)", None),
    ],
)
def test_a_stalled_process_stops_the_other_in_one_line(tmp_path, inject, message, last_epoch):
    out = tmp_path / "stall"
    r = _torchrun(
        "tests.inject", *ARGS, "--dist-timeout", "5", "--out", str(out), inject=inject,
        timeout=240,
    )  # fmt: skip
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert message in text, text[-3000:]
    assert "[rank0]: Traceback" not in text  # one line, not a traceback
    if last_epoch is None:
        assert not (out / "checkpoint.pt").exists()
    else:
        assert "The last checkpoint (epoch 1) is intact: relaunch with --resume" in text
        assert train.load_checkpoint(out / "checkpoint.pt")["meta"]["epoch"] == last_epoch


def test_a_checkpoint_resumes_with_the_process_count_that_wrote_it(tmp_path):
    # every process's data order is saved: another count cannot continue it bitwise, and
    # is refused with both counts
    from contnet import cli

    out = tmp_path / "run"
    assert cli.main([*ARGS[:2], "2", *ARGS[5:], "--out", str(out)]) == 0
    payload = train.load_checkpoint(out / "checkpoint.pt")
    state = payload["rng"]["loader"]
    payload["rng"]["loader_ranks"] = [state, state]  # as two processes write it
    payload["meta"] = json.dumps(payload["meta"])
    payload.pop("path")
    torch.save(payload, out / "checkpoint.pt")
    with pytest.raises(SystemExit, match=r"written by 2 process\(es\), this run has 1"):
        cli.main([*ARGS[:2], "2", *ARGS[5:], "--out", str(out), "--resume"])
