"""The papers' presets: contnet train --preset takes a paper's settings (options beside it
win), the help lists the papers' figures, CIFAR-100 is read from its binary files, and
contnet reproduce runs every arm end to end on synthetic CIFAR-format files."""

import json

import numpy as np
import pytest
import torch

from contnet import cli
from contnet.training import TrainConfig, data, presets

from .test_main_job import _write_cifar


def _write_cifar100(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in ("train.bin", "test.bin"):
        fine = rng.integers(0, 100, n, dtype=np.uint8)
        coarse = fine // 5
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        np.concatenate([coarse[:, None], fine[:, None], images.reshape(n, -1)], 1).tofile(
            folder / name
        )
    return fine, images


def test_cifar100_binary_reader(tmp_path):
    fine, images = _write_cifar100(tmp_path / "cifar-100-binary")
    ds = data.load("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.x_test.shape == (6, 3, 32, 32)
    assert torch.equal(ds.y_test, torch.from_numpy(fine).long())  # the fine labels
    torch.testing.assert_close(ds.to_pixels(ds.x_test), torch.from_numpy(images).float() / 255)
    with pytest.raises(FileNotFoundError, match="missing test.bin"):
        (tmp_path / "cifar-100-binary" / "test.bin").unlink()
        data.load("cifar100", tmp_path)


def test_every_preset_builds_a_valid_config_for_every_arm():
    for preset in presets.PRESETS.values():
        for arm in preset.arms:
            cfg = TrainConfig(**{**preset.settings, **arm.settings})
            assert cfg.val_fraction == 0.0 and cfg.batch_size == 128
        for p in preset.projections:
            assert p.arm in {a.name for a in preset.arms}
    s = presets.get("stateful-odenet-cifar10").settings
    small = presets.scaled({**s, "refine_at": (10, 20, 30, 40)}, 6)
    assert small["epochs"] == 6 and small["lr_milestones"] == (3, 4, 5)
    assert small["refine_at"] == (1, 2, 3, 4)  # every one, in order
    assert presets.scaled({**s, "refine_at": (10, 20, 30, 40)}, 4)["refine_at"] == (1, 2, 3)
    with pytest.raises(ValueError, match="unknown preset 'resnet'"):
        presets.get("resnet")


def test_train_help_lists_the_papers_figures(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "continuousnet-cifar10" in text and "93.29%" in text and "93.69%" in text


def test_train_preset_gives_the_settings_and_options_beside_it_win(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli.parser, "cmd_train", lambda args: seen.update(args=args) or 0)
    argv = ["train", "--preset", "continuousnet-cifar10", "--epochs", "3", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    args = seen["args"]
    assert args.lr == 0.1 and args.weight_decay == 5e-4 and args.batch_size == 128
    assert tuple(args.lr_milestones) == (80, 120, 140) and args.data == "cifar10"
    assert args.epochs == 3  # given beside the preset: it wins


@pytest.mark.slow
def test_reproduce_end_to_end_on_synthetic_cifar(tmp_path, capsys):
    _write_cifar(tmp_path / "cifar", n=24)
    out = tmp_path / "out"
    argv = [
        "reproduce",
        "--preset",
        "stateful-odenet-cifar10",
        "--data-dir",
        str(tmp_path / "cifar"),
    ]
    assert (
        cli.main(
            [
                *argv,
                "--epochs",
                "5",
                "--batch-size",
                "64",
                "--steps",
                "1",
                "2",
                "--reference",
                "rk4",
                "4",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = (out / "report.md").read_text()
    summary = json.loads((out / "report.json").read_text())
    assert set(summary["arms"]) == {"direct-16", "refined-16"}
    refined = summary["arms"]["refined-16"]["history"]
    assert [h["n_basis"] for h in refined] == [1, 2, 4, 8, 16]  # every refinement, scaled
    assert summary["arms"]["direct-16"]["paper_accuracy"] == 93.69
    assert [p["n_basis"] for p in summary["projections"]] == [8, 8]
    assert "| direct-16 |" in report and "93.69" in report and "Projection" in report
    assert (out / "training_curves.png").exists()
    assert (out / "manifestations-refined-16.png").exists()
