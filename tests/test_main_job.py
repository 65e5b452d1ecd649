"""The main job: exact refinement of optimiser state, bitwise resume, data readers, CLI."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import contnet
from contnet import basis, cli
from contnet import training as train
from contnet.evaluation import compress
from contnet.training import data


def _batch(n=16):
    return torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,))


def test_refined_optimizer_step_equals_step_of_model_built_refined():
    torch.manual_seed(0)
    a = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=1, scheme="midpoint")
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    batches = [_batch() for _ in range(4)]
    for x, y in batches[:3]:
        opt_a.zero_grad()
        loss = F.cross_entropy(a(x), y)  # kept alive across the refinement, as a training loop does
        loss.backward()
        opt_a.step()
    weights = {k: v.clone() for k, v in a.state_dict().items()}
    momenta = {n: opt_a.state[p]["momentum_buffer"].clone() for n, p in a.named_parameters()}
    contnet.refine(a, optimizer=opt_a)

    # a model built at K = 2 with the refined weights and momenta, mapped independently
    b = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2, scheme="midpoint")
    R = basis.get("piecewise_constant", 1).refine_matrix()
    node = lambda k, v: v.dim() > 0 and v.shape[0] == 1 and k.startswith("stages.")  # noqa: E731
    b.load_state_dict(
        {k: (basis.apply_matrix(R, v) if node(k, v) else v) for k, v in weights.items()}
    )
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for n, p in b.named_parameters():
        m = momenta[n]
        opt_b.state[p]["momentum_buffer"] = basis.apply_matrix(R, m) if node(n, m) else m.clone()
    assert [blk.n_steps for blk in a.stages] == [blk.n_steps for blk in b.stages] == [2, 2]

    x, y = batches[3]
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # the refined cells now differ: each got its own gradient
    w = a.stages[0].unit.conv1.weight
    assert w.grad.shape == w.shape and not torch.equal(w[0], w[1])


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "extra", [{}, {"stochastic_depth": 0.3, "scheme": "lm", "backprop": "checkpoint"}],
    ids=["rk4", "lm-stochastic-depth"],
)  # fmt: skip
def test_resume_is_bitwise_identical(tmp_path, extra):
    ds = data.load_digits()
    ds.x_train, ds.y_train = ds.x_train[:256], ds.y_train[:256]
    cfg = train.TrainConfig(
        widths=(4, 8), epochs=4, refine_at=(2,), batch_size=32, progress=False, **extra
    )
    full = train.train(cfg, tmp_path / "full", ds, log=lambda *a: None)

    def stop_after_two(msg):
        if msg.startswith("epoch   2/"):
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train.train(cfg, tmp_path / "cut", ds, log=stop_after_two)
    resumed = train.train(cfg, tmp_path / "cut", ds, resume=True, log=lambda *a: None)
    for (k, a), (_, b) in zip(
        full["model"].state_dict().items(), resumed["model"].state_dict().items()
    ):
        assert torch.equal(a, b), k
    sd = full["model"].stages[0].stochastic_depth
    assert (
        sd.p == extra.get("stochastic_depth", 0.0)
        and sd == resumed["model"].stages[0].stochastic_depth
    )
    drop = lambda h: [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in h]  # noqa: E731
    assert drop(full["history"]) == drop(resumed["history"])
    with pytest.raises(train.CheckpointError, match="trained with epochs=4"):
        train.train(
            train.TrainConfig(widths=(4, 8), epochs=5, refine_at=(2,), progress=False, **extra),
            tmp_path / "cut",
            ds,
            resume=True,
        )


def _write_cifar(folder, n=5, label=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in data.CIFAR_TRAIN + (data.CIFAR_TEST,):
        labels = (
            rng.integers(0, 10, n, dtype=np.uint8) if label is None else np.full(n, label, np.uint8)
        )
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        rec = np.concatenate([labels[:, None], images.reshape(n, -1)], 1)
        rec.tofile(folder / name)
        written[name] = (images, labels)
    return written


def test_cifar10_binary_reader(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-bin")
    images, labels = data.read_cifar10_file(tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin")
    assert np.array_equal(images, written["data_batch_3.bin"][0]) and np.array_equal(
        labels, written["data_batch_3.bin"][1]
    )
    ds = data.load("cifar10", tmp_path)  # the parent folder works too
    assert ds.x_train.shape == (25, 3, 32, 32) and ds.x_test.shape == (5, 3, 32, 32)
    assert torch.equal(ds.y_test, torch.from_numpy(written["test_batch.bin"][1]).long())
    loader = data.Loader(ds.x_train, ds.y_train, 8, shuffle=True, augment=True)
    xb, _ = next(iter(loader))
    assert xb.shape == (8, 3, 32, 32)


def test_cifar10_reader_errors(tmp_path):
    with pytest.raises(ValueError, match="needs --data-dir"):
        data.load("cifar10", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load("cifar10", tmp_path / "nowhere")
    folder = tmp_path / "c"
    _write_cifar(folder)
    (folder / "data_batch_2.bin").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_2.bin"):
        data.load("cifar10", folder)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01" * 100)
    with pytest.raises(ValueError, match="not a positive multiple of the 3073-byte record"):
        data.read_cifar10_file(bad)
    _write_cifar(tmp_path / "l", n=2, label=12)
    with pytest.raises(ValueError, match="label 12 is not in 0..9"):
        data.read_cifar10_file(tmp_path / "l" / "test_batch.bin")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        data.load("mnist")


def test_cli_train_eval_compress(tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--widths", "4", "8", "--no-progress"]
    assert (
        cli.main(
            [
                "train",
                "--epochs",
                "2",
                "--refine-at",
                "1",
                "--batch-size",
                "128",
                "--out",
                str(out),
                *small,
            ]
        )
        == 0
    )
    summary = json.loads((out / "train.json").read_text())
    assert [h["n_basis"] for h in summary["history"]] == [1, 2]
    for f in ("checkpoint.pt", "checkpoint.json", "training_curves.png", "theta.png"):
        assert (out / f).stat().st_size > 0
    ck = str(out / "checkpoint.pt")
    assert (
        cli.main(
            [
                "eval",
                "--checkpoint",
                ck,
                "--schemes",
                "euler",
                "rk4",
                "--steps",
                "1",
                "2",
                "4",
                "--reference",
                "rk4",
                "8",
            ]
        )
        == 0
    )
    table = json.loads((out / "eval.json").read_text())
    assert set(table["rows"]) == {"euler", "rk4"} and (out / "manifestations.png").exists()
    saved = tmp_path / "small.pt"
    assert (
        cli.main(
            [
                "compress",
                "--checkpoint",
                ck,
                "--max-drop",
                "100",
                "--steps",
                "2",
                "1",
                "--schemes",
                "euler",
                "midpoint",
                "--rtols",
                "1e-2",
                "--save",
                str(saved),
            ]
        )
        == 0
    )
    comp = json.loads((out / "compress.json").read_text())
    # the original (rk4 as trained), 2 node counts x 2 schemes x 2 step counts, and 2 node
    # counts run to rtol 1e-2 (dopri5)
    assert comp["choice"] is not None and len(comp["candidates"]) == 1 + 2 * 2 * 2 + 2
    adaptive = [c for c in comp["candidates"] if c["rtol"] is not None]
    assert [(c["rtol"], c["scheme"]) for c in adaptive] == [(1e-2, "dopri5")] * 2
    assert comp["candidates"][0] == comp["original"] and comp["original"]["scheme"] == "rk4"
    model = train.model_from_checkpoint(train.load_checkpoint(saved))
    # reloaded in the manifestation compress chose, not the one it was trained in (rk4)
    assert [b.scheme for b in model.stages] == [comp["choice"]["scheme"]] * 2
    assert model.stages[0].n_steps == comp["choice"]["n_steps"]
    assert [b["block"] for b in comp["choice"]["blocks"]] == ["stages.0", "stages.1"]
    printed = capsys.readouterr().out
    assert "fastest within 100.0 point(s) on validation" in printed
    assert "test accuracy of the choice" in printed
    # chosen on the validation split training held out, the test set measured after
    assert set(comp["choice"]) >= {"val", "test"}
    assert [c for c in comp["candidates"] if "test" in c] == [comp["original"], comp["choice"]]


def test_compress_tries_the_models_own_tableau_first():
    # a user's ButcherTableau (not a registered name) is tried as it is, then the defaults
    from contnet import schemes

    ralston = schemes.ButcherTableau(
        "my_ralston", [[0, 0], [2 / 3, 0]], [1 / 4, 3 / 4], [0, 2 / 3], 2
    )
    net = contnet.ContinuousNet(1, 10, widths=(4,), n_basis=2).eval()
    net.set_manifestation(ralston)
    ds = data.load_digits()
    val = ds.x_test[:32], ds.y_test[:32]
    r = compress(
        net, val, n_basis=[2], steps=[2], latency_batch=8, min_run_time=0.01, log=lambda *a: None
    )
    assert [c["scheme"] for c in r["candidates"]] == ["my_ralston", "euler", "midpoint", "rk4"]
    assert r["original"]["scheme"] == "my_ralston" and net.stages[0].scheme is ralston
    # a budget that no comparison can meet is refused before any candidate is evaluated
    for bad, error in ((float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="max_drop must be a"):
            compress(net, val, max_drop=bad, log=lambda *a: None)


def test_cli_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint .* does not exist"):
        cli.main(["eval", "--checkpoint", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit, match="refine_at epochs must lie in 1..2"):
        cli.main(["train", "--epochs", "3", "--refine-at", "5", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="cannot load data: --data cifar10 needs --data-dir"):
        cli.main(["train", "--data", "cifar10", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--epochs must be >= 3"):
        cli.main(["demo", "--epochs", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--reference takes SCHEME N_STEPS"):
        cli.main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--reference", "rk4", "x"])
    with pytest.raises(SystemExit, match="--reference takes SCHEME N_STEPS: unknown scheme"):
        cli.main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--reference", "rk5", "8"])
    out = str(tmp_path / "run")
    for option, value, message in (
        ("--lr", "-1", "lr must be a positive number, got -1.0"),
        ("--momentum", "-0.5", "momentum must be a number >= 0, got -0.5"),
        ("--weight-decay", "-1", "weight_decay must be a number >= 0, got -1.0"),
        ("--refine-at", "5", r"refine_at needs epochs >= 2 .* got epochs=1"),
    ):
        with pytest.raises(SystemExit, match=message):
            cli.main(["train", "--epochs", "1", option, value, "--out", out])
    # a --resume that cannot resume: a message, not a traceback
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"contnet train: .*checkpoint\.pt is not a checkpoint"):
        cli.main(["train", "--epochs", "1", "--out", out, "--resume", "--no-progress"])


@pytest.mark.parametrize(
    "argv,option",
    [
        (["eval", "--checkpoint", "c.pt", "--steps", "0"], "--steps"),
        (["compress", "--checkpoint", "c.pt", "--candidate-n-basis", "0"], "--candidate-n-basis"),
        (["compress", "--checkpoint", "c.pt", "--save", "small.json"], "--save"),
        (["compress", "--checkpoint", "c.pt", "--max-drop", "nan"], "--max-drop"),
        (["demo", "--max-drop", "inf"], "--max-drop"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--weight-decay", "nan"], "argument --weight-decay: must be finite"),
        (["train", "--norm", "group"], "argument --norm: expected one of none, batch"),
        (["train", "--device", "foo"], "argument --device: not a device"),
        (["eval", "--checkpoint", "c.pt", "--device", "meta:0:1"], "argument --device"),
        (["demo", "--scheme", "euler"], "unrecognized arguments: --scheme"),  # demo sets it
        (["demo", "--refine-at", "3"], "unrecognized arguments: --refine-at"),
    ],
)
def test_cli_rejects_bad_options_by_name(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and option in capsys.readouterr().err


def test_cli_device_must_exist(capsys):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = "cuda" if count == 0 else f"cuda:{count}"
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--device", wanted])
    assert e.value.code == 2
    assert f"argument --device: '{wanted}': this machine has" in capsys.readouterr().err


def test_resume_refuses_other_settings_and_says_when_it_starts_afresh(tmp_path):
    ds = data.load_digits()
    ds.x_train, ds.y_train = ds.x_train[:64], ds.y_train[:64]
    cfg = train.TrainConfig(widths=(4,), epochs=2, batch_size=32, progress=False)
    seen = []
    train.train(cfg, tmp_path, ds, resume=True, log=seen.append)
    assert any(m.startswith("no checkpoint at") for m in seen)
    other = dataclasses.replace(cfg, lr=0.5, batch_size=16, act="tanh", progress=True)
    with pytest.raises(train.CheckpointError) as e:
        train.train(other, tmp_path, ds, resume=True, log=seen.append)
    for key in ("lr=0.1 (asked: 0.5)", "batch_size=32 (asked: 16)", "act='relu' (asked: 'tanh')"):
        assert key in str(e.value)
    assert "progress" not in str(e.value)  # cosmetic settings may differ


def test_console_help():
    for args in (
        ["--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["compress", "--help"],
        ["demo", "--help"],
    ):
        r = subprocess.run([sys.executable, "-m", "contnet", *args], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: contnet" in r.stdout, r.stderr


@pytest.mark.slow
def test_demo_quick_runs(tmp_path):
    assert (
        cli.main(["demo", "--quick", "--widths", "4", "8", "--no-progress", "--out", str(tmp_path)])
        == 0
    )
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["half_steps"]["n_steps"] == 2
    for f in (
        "training_curves.png",
        "manifestations.png",
        "theta.png",
        "eval.json",
        "compress.json",
    ):
        assert (tmp_path / f).exists()
