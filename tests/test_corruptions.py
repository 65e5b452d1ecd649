"""The corrupted-digits benchmark: deterministic, every corruption changes the images and
more so at a higher severity, pixels stay in [0, 1], labels are untouched; and contnet eval
--corruptions reports it."""

import json

import pytest
import torch

from contnet import cli
from contnet.evaluation import CORRUPTIONS, SEVERITIES, corrupt, corruption_table
from contnet.training import data


@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    return ds, ds.to_pixels(ds.x_test)


def test_pixels_round_trip(digits):
    ds, pixels = digits
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    torch.testing.assert_close(ds.from_pixels(pixels), ds.x_test, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_and_in_range(digits, name):
    _, pixels = digits
    for s in (1, 5):
        a = corrupt(pixels, name, s, seed=3)
        b = corrupt(pixels.clone(), name, s, seed=3)
        assert torch.equal(a, b)  # same seed, same images
        assert a.shape == pixels.shape and a.dtype == pixels.dtype
        assert a.min() >= 0 and a.max() <= 1
    if name not in ("contrast", "gaussian_blur"):  # deterministic maps: no seed to draw
        assert not torch.equal(corrupt(pixels, name, 3, seed=3), corrupt(pixels, name, 3, seed=4))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_severity_changes_the_images_and_more_at_higher_ones(digits, name):
    _, pixels = digits
    change = [(corrupt(pixels, name, s) - pixels).abs().mean().item() for s in SEVERITIES]
    assert change[0] > 1e-3, change
    assert all(b > a for a, b in zip(change, change[1:])), change


def test_labels_and_the_input_are_untouched(digits):
    ds, pixels = digits
    before, labels = pixels.clone(), ds.y_test.clone()
    seen = []

    def evaluate(x, y):
        seen.append(y)
        return 0.5

    table = corruption_table(evaluate, pixels, ds.y_test)
    assert torch.equal(pixels, before) and torch.equal(ds.y_test, labels)
    assert all(y is ds.y_test for y in seen) and len(seen) == 1 + len(CORRUPTIONS) * 5
    assert table["mean_corruption_accuracy"] == 0.5 and set(table["accuracy"]) == set(CORRUPTIONS)


def test_errors_name_the_argument(digits):
    _, pixels = digits
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(pixels, "fog", 1)
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt(pixels, "shift", 6)
    with pytest.raises(ValueError, match="x must be a floating-point"):
        corrupt(pixels[0], "shift", 1)


@pytest.mark.slow
def test_eval_reports_the_corruptions(tmp_path):
    from contnet import training as train

    ds = data.load_digits()
    ds.x_train, ds.y_train = ds.x_train[:300], ds.y_train[:300]
    cfg = train.TrainConfig(widths=(4,), epochs=1, batch_size=64, progress=False)
    train.train(cfg, tmp_path, ds, log=lambda *a: None)
    ck = str(tmp_path / "checkpoint.pt")
    argv = ["eval", "--checkpoint", ck, "--schemes", "rk4", "--steps", "1"]
    assert cli.main([*argv, "--reference", "rk4", "2", "--corruptions"]) == 0
    table = json.loads((tmp_path / "corruptions.json").read_text())
    assert set(table["accuracy"]) == set(CORRUPTIONS)
    assert all(len(v) == 5 for v in table["accuracy"].values())
    assert 0 <= table["mean_corruption_accuracy"] <= 1
    assert (tmp_path / "corruptions.png").exists()
