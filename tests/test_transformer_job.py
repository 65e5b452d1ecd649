"""The continuous transformer through the whole job: ContinuousTransformer itself, then
contnet train --model transformer with refinement, eval (the manifestation table),
compress (and reload what it saves), plots, checkpoints and resume."""

import pytest
import torch

import contnet
from contnet import cli
from contnet import training as train
from contnet.training import data

from .test_every_basis import _quiet, evaluates_and_compresses, resumes_bitwise


def test_image_and_token_inputs():
    torch.manual_seed(0)
    net = contnet.ContinuousTransformer(1, 10, 8, patch_size=2, dim=16, heads=2, n_basis=2)
    x = torch.randn(3, 1, 8, 8)
    assert net(x).shape == (3, 10)
    assert net.pos.shape == (1, 16, 16)
    tokens = contnet.ContinuousTransformer(vocab_size=11, max_len=6, dim=8, heads=2, stages=2)
    ids = torch.randint(0, 11, (4, 5))
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    out = tokens(ids, mask=causal)
    assert out.shape == (4, 10)
    assert not torch.equal(out, tokens(ids))
    rebuilt = contnet.ContinuousTransformer.from_config(net.config)
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), net.eval()(x), rtol=0, atol=0)
    before = net(x)
    contnet.refine(net, steps=False)
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"image_size": 7}, ValueError, r"image_size \(7, 7\) must be divisible by patch_size 2"),
        ({"dim": 10, "heads": 4}, ValueError, r"dim \(10\) must be divisible by heads \(4\)"),
        ({"vocab_size": 5}, ValueError, "max_len is required with vocab_size"),
        ({"stages": 0}, ValueError, "stages must be >= 1"),
    ],
)
def test_errors_name_the_argument(kw, error, match):
    with pytest.raises(error, match=match):
        contnet.ContinuousTransformer(**kw)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        contnet.ContinuousTransformer(dim=8, heads=2)(torch.randn(2, 1, 8, 6))


@pytest.mark.slow
def test_train_refine_eval_compress_resume(tmp_path, capsys):
    ds = data.load_digits()
    ds.x_train, ds.y_train = ds.x_train[:400], ds.y_train[:400]
    cfg = train.TrainConfig(
        model="transformer",
        dim=16,
        heads=2,
        optimizer="adamw",
        lr=3e-3,
        basis="fem_linear",
        n_basis=2,
        epochs=3,
        refine_at=(1, 2),
        batch_size=64,
        progress=False,
    )
    full = train.train(cfg, tmp_path / "full", ds, log=_quiet)
    assert isinstance(full["model"], contnet.ContinuousTransformer)
    ks = [h["n_basis"] for h in full["history"]]
    assert ks == [2, 3, 5], ks
    resumes_bitwise(cfg, ds, tmp_path, full["model"])

    ck = str(tmp_path / "full" / "checkpoint.pt")
    out = str(tmp_path / "full")
    rebuilt = train.model_from_checkpoint(train.load_checkpoint(ck))
    assert isinstance(rebuilt, contnet.ContinuousTransformer)
    _, small = evaluates_and_compresses(tmp_path, reference_steps=8)
    assert isinstance(small, contnet.ContinuousTransformer)
    capsys.readouterr()
    argv = ["train", "--model", "transformer", "--out", out, "--resume", "--no-progress"]
    argv += ["--dim", "16", "--heads", "2", "--optimizer", "adamw", "--lr", "3e-3"]
    argv += ["--basis", "fem_linear", "--n-basis", "2", "--epochs", "3", "--batch-size", "64"]
    assert cli.main([*argv, "--refine-at", "1", "2"]) == 0
    assert "resumed from" in capsys.readouterr().out
