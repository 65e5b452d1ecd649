"""Every basis family survives the whole job, with and without batch norm: train with
refinement, eval, compress (and reload what it saves), resume an interrupted run to the
bitwise result of an uninterrupted one. The batch norms' cells follow the weights' cells."""

import json

import pytest
import torch

from contnet import cli
from contnet import training as train
from contnet.training import data

# a family and the node count it starts from
FAMILIES = [("piecewise_constant", 1), ("fem_linear", 2), ("piecewise_linear", 2), ("legendre", 2)]


class _Interrupt(Exception):
    pass


def _stop_after(epoch):
    def log(msg):
        if msg.startswith(f"epoch {epoch:3d}/"):
            raise _Interrupt

    return log


def _quiet(*args):
    pass


def resumes_bitwise(cfg, ds, tmp_path, full_model) -> None:
    """A run of ``cfg`` interrupted after epoch 2 and resumed ends with ``full_model``'s
    weights, bit for bit (the uninterrupted run's)."""
    with pytest.raises(_Interrupt):
        train.train(cfg, tmp_path / "cut", ds, log=_stop_after(2))
    resumed = train.train(cfg, tmp_path / "cut", ds, resume=True, log=_quiet)
    for (name, a), (_, b) in zip(
        full_model.state_dict().items(), resumed["model"].state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def evaluates_and_compresses(tmp_path, reference_steps: int):
    """``contnet eval`` and ``compress --save`` on ``tmp_path/full/checkpoint.pt`` from the
    command line; returns compress's result and the model rebuilt from what it saved
    (checked to have the chosen node count)."""
    ck = str(tmp_path / "full" / "checkpoint.pt")
    out = str(tmp_path / "full")
    steps = ["--steps", "1", "2", "--reference", "rk4", str(reference_steps)]
    assert cli.main(["eval", "--checkpoint", ck, "--schemes", "euler", "rk4", *steps]) == 0
    table = json.loads((tmp_path / "full" / "eval.json").read_text())
    assert set(table["rows"]) == {"euler", "rk4"}
    saved = str(tmp_path / "small.pt")
    compress = ["compress", "--checkpoint", ck, "--schemes", "euler", "--steps", "2", "1"]
    assert cli.main([*compress, "--max-drop", "100", "--out", out, "--save", saved]) == 0
    result = json.loads((tmp_path / "full" / "compress.json").read_text())
    small = train.model_from_checkpoint(train.load_checkpoint(saved))
    assert small.stages[0].unit.n_basis == result["choice"]["n_basis"]
    return result, small


def _cells_follow_weights(model):
    for block in model.stages:
        unit = block.unit
        for norm in (unit.norm1, unit.norm2):
            if norm is not None:
                assert norm.n_basis == unit.basis.n_cells, (unit.basis, norm.n_basis)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("family, k0", FAMILIES)
def test_train_refine_eval_compress_resume(family, k0, norm, tmp_path, capsys):
    ds = data.load_digits()
    ds.x_train, ds.y_train = ds.x_train[:400], ds.y_train[:400]
    cfg = train.TrainConfig(
        widths=(4, 8),
        basis=family,
        n_basis=k0,
        norm=None if norm == "none" else norm,
        epochs=3,
        refine_at=(1, 2),
        batch_size=64,
        progress=False,
    )
    full = train.train(cfg, tmp_path / "full", ds, log=_quiet)
    ks = [h["n_basis"] for h in full["history"]]
    assert ks[1] > ks[0] and ks[2] > ks[1], ks
    _cells_follow_weights(full["model"])

    resumes_bitwise(cfg, ds, tmp_path, full["model"])

    result, small = evaluates_and_compresses(tmp_path, reference_steps=4)
    sizes = sorted({c["n_basis"] for c in result["candidates"]}, reverse=True)
    assert sizes[0] == ks[-1] and len(sizes) >= 2, sizes  # the original and fewer nodes
    _cells_follow_weights(small)
    out = str(tmp_path / "full")
    # the command line resumes it too (all epochs done: it loads and reports)
    capsys.readouterr()
    argv = ["train", "--out", out, "--resume", "--no-progress", "--widths", "4", "8"]
    argv += ["--basis", family, "--n-basis", str(k0), "--norm", norm, "--epochs", "3"]
    assert cli.main([*argv, "--refine-at", "1", "2", "--batch-size", "64"]) == 0
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.parametrize("family, k0", FAMILIES)
def test_units_build_on_the_meta_device(family, k0):
    """A model of any basis can be laid out on the meta device (as for a model too large to
    build on the host): the basis's own host math stays on the CPU."""
    import contnet

    with torch.device("meta"):
        block = contnet.ContinuousBlock(
            contnet.MLPUnit(8, n_basis=2 * k0, basis=family), scheme="rk4", n_steps=2
        )
    assert all(p.is_meta for p in block.parameters())
    block.to_empty(device="cpu")
    torch.manual_seed(0)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(3, 8)
    assert torch.isfinite(block(x)).all()
