"""Drop-in use in a user's model: module citizenship, torch.compile, mixed precision,
channels_last, data-parallel training, safe checkpoints."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import contnet
from contnet import ops
from contnet import training as train
from contnet.training.data import load_digits

from .helpers import autocast_errors


def _seq():
    block = contnet.ContinuousBlock(contnet.ConvUnit(4, n_basis=2, norm="batch"), scheme="rk4")
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), block, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def test_block_in_sequential_modes_state_dict_dtype():
    torch.manual_seed(0)
    seq = _seq()
    x = torch.randn(4, 3, 8, 8)
    seq.train()
    seq(x)  # running statistics move
    seq.eval()
    y = seq(x)
    other = _seq()
    other.load_state_dict(seq.state_dict())
    other.eval()
    torch.testing.assert_close(other(x), y)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), y)
    with torch.inference_mode():
        torch.testing.assert_close(seq(x), y)
    seq64 = seq.to(torch.float64)
    assert seq64(x.double()).dtype == torch.float64
    torch.testing.assert_close(seq64(x.double()).float(), y, rtol=1e-4, atol=1e-5)
    keys = seq.state_dict().keys()
    assert "1.unit.conv1.weight" in keys and "1.unit.norm1.running_mean" in keys


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_continuous_net_forward_backward_fullgraph(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2, basis="fem_linear", scheme="rk4")
    x = torch.randn(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    # Inductor's layout optimisation on the CPU can return wrong weight gradients for
    # convolutions whose operands end up in mixed layouts, intermittently, in plain
    # PyTorch too (o = c1x1_s2(relu(x)) + relu(c3x3_s2(relu(x))); o + c3x3(o) reproduces
    # it with torch 2.14.1); compile without it so this test checks contnet, not that.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(layout_optimization=False):
        loss_c = F.cross_entropy(compiled(x), y)
    grads_c = torch.autograd.grad(loss_c, list(net.parameters()))
    loss_e = F.cross_entropy(net(x), y)
    grads_e = torch.autograd.grad(loss_e, list(net.parameters()))
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_error_within_twice_eager_pytorch(dtype):
    torch.manual_seed(0)
    net = contnet.ContinuousNet(
        3, 10, widths=(8, 16), n_basis=2, basis="fem_linear", scheme="rk4"
    ).eval()
    x = torch.randn(4, 3, 16, 16)
    fused, eager = autocast_errors(net, x, dtype)
    assert fused <= 2 * eager + 1e-6, (fused, eager)


def test_autocast_bfloat16_trains():
    torch.manual_seed(0)
    ds = load_digits()
    net = contnet.ContinuousNet(1, 10, widths=(8, 16), n_basis=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    order = torch.randperm(len(ds.x_train))  # the training set is stored by class
    losses = []
    for i in range(30):
        idx = order[(64 * i) % 1408 : (64 * i) % 1408 + 64]
        xb, yb = ds.x_train[idx], ds.y_train[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3])


def test_channels_last_without_copies_in_the_fused_ops():
    from torch.profiler import ProfilerActivity, profile

    cl = torch.channels_last
    y, x, acc = (torch.randn(2, 8, 5, 5).contiguous(memory_format=cl) for _ in range(3))
    b = torch.randn(8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        outs = ops.rk_epilogue(y, b, "relu", 1.0, [x, acc], [x], 0.5, [0.1, 0.2, 0.0, 0.3])
        out = ops.rk_combine(x, [y, acc], 0.5, [1.0, -1.0])
    names = [e.name for e in prof.events()]
    assert not any(n in ("aten::copy_", "aten::clone", "aten::contiguous") for n in names), names
    assert all(o.is_contiguous(memory_format=cl) for o in [*outs, out])
    # end to end: the states of a channels_last network stay channels_last
    net = contnet.ContinuousNet(3, 10, widths=(8, 16), n_basis=2).to(memory_format=cl).eval()
    seen = []
    for block in net.stages:
        block.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=cl)))
    net(torch.randn(2, 3, 16, 16).contiguous(memory_format=cl))
    assert seen == [True, True]


@pytest.mark.parametrize("basis", ["piecewise_constant", "fem_linear", "legendre"])
def test_channels_last_stage_weights_are_not_converted_per_stage(basis):
    # The weights a block interpolates for its stage times keep the channels_last filter
    # banks of the nodes: the convolutions take them as they are, so the number of layout
    # copies of a forward+backward does not grow with the number of steps.
    from torch.profiler import ProfilerActivity, profile

    cl = torch.channels_last
    unit = contnet.ConvUnit(8, n_basis=3, basis=basis, norm=None).to(memory_format=cl)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=cl).requires_grad_()
    copies = []
    for n_steps in (2, 6):
        block = contnet.ContinuousBlock(unit, scheme="rk4", n_steps=n_steps)
        block(x).sum().backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            block(x).sum().backward()
        copies.append(sum(e.name == "aten::clone" for e in prof.events()))
        table = block._rate(x).table
        assert all(w[0].is_contiguous(memory_format=cl) for e in table.values() for w in e.values())
    assert copies[0] == copies[1], copies


@pytest.mark.slow
def test_data_parallel_training_with_refinement(tmp_path):
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


def test_nccl_with_more_processes_than_gpus_is_refused(monkeypatch):
    # refused before the process group starts: two NCCL ranks on one GPU fail or hang
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="--device cuda with NCCL needs one GPU per process"):
        train.Distributed("cuda")


# ---------------------------------------------------------------------------- checkpoints
def _checkpoint(tmp_path):
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2, basis="fem_linear", scheme="heun")
    cfg = train.TrainConfig(widths=(4, 8), n_basis=2, basis="fem_linear", scheme="heun", epochs=2)
    return net, train.save_checkpoint(tmp_path / "ck.pt", net, config=cfg, epoch=0)


def test_checkpoint_metadata_and_round_trip(tmp_path):
    net, path = _checkpoint(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"] == "contnet-checkpoint" and meta["version"] == 1
    state = meta["state"]
    assert {k: state[k] for k in ("n_basis", "basis", "scheme", "n_steps")} == {
        "n_basis": [2, 2],
        "basis": ["fem_linear"] * 2,
        "scheme": ["heun"] * 2,
        "n_steps": [2, 2],
    }
    # every time-dependent layer's basis and every block's manifestation, by name
    assert state["layers"]["stages.1.unit.conv2"] == ["fem_linear", 2]
    assert state["layers"]["stages.0.unit.norm1"] == ["piecewise_constant", 1]
    assert state["blocks"] == {"stages.0": ["heun", 2], "stages.1": ["heun", 2]}
    again = train.model_from_checkpoint(train.load_checkpoint(path))
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    refined = train.model_from_checkpoint(
        train.load_checkpoint(path), n_basis=3
    )  # 2 -> 3 by refinement
    assert refined.stages[0].unit.n_basis == 3
    with pytest.raises(train.CheckpointError, match="n_basis=4 is neither reached by refinement"):
        train.model_from_checkpoint(train.load_checkpoint(path), n_basis=4)


def test_truncated_tampered_and_mismatched_checkpoints_are_refused(tmp_path):
    _, path = _checkpoint(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(train.CheckpointError, match="cannot be read safely"):
        train.load_checkpoint(cut)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save(
        {"format": "contnet-checkpoint", "version": 1, "meta": "{}", "x": Exploit()},
        evil,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    with pytest.raises(train.CheckpointError, match="weights_only loading refuses"):
        train.load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(train.CheckpointError, match="not a contnet checkpoint"):
        train.load_checkpoint(other)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(train.CheckpointError, match="format version 99"):
        train.load_checkpoint(tmp_path / "future.pt")
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["state"]["n_basis"] = [3, 3]  # says K=3, holds K=2 weights
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(train.CheckpointError, match="mismatch.pt.s metadata disagree"):
        train.model_from_checkpoint(train.load_checkpoint(tmp_path / "mismatch.pt"))
    payload = torch.load(path, weights_only=True)
    del payload["model"]["stages.1.unit.conv2.weight"]
    torch.save(payload, tmp_path / "missing.pt")
    with pytest.raises(
        train.CheckpointError, match=r"missing\.pt weights .*stages\.1\.unit\.conv2"
    ):
        train.model_from_checkpoint(train.load_checkpoint(tmp_path / "missing.pt"))


def test_checkpoint_of_a_model_projected_onto_another_family(tmp_path):
    # the weights of a model projected onto another basis family are read in that family
    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=3, basis="fem_linear").eval()
    contnet.project(net, 2, "legendre")
    x = torch.randn(2, 1, 8, 8)
    path = train.save_checkpoint(tmp_path / "ck.pt", net)
    again = train.model_from_checkpoint(train.load_checkpoint(path)).eval()
    assert again.stages[0].unit.basis == net.stages[0].unit.basis
    torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    net, path = _checkpoint(tmp_path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(path, net, epoch=1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
