"""contnet study: the claims on corrupted digits, every model and row, over seeds."""

import json

import pytest

from contnet import cli
from contnet.cli.study import _arms, _mean_sd


def test_the_arms_and_their_refinements():
    arms = _arms(4, 18)
    assert arms["rk4-refined"]["refine_at"] == (6, 12)  # as the demo refines
    assert arms["resnet"] == {"scheme": "euler", "n_basis": 4}
    assert _arms(8, 18)["rk4-refined"]["refine_at"] == (4, 8, 12)
    assert _mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)


@pytest.mark.slow
def test_study_runs_every_model_over_seeds(tmp_path, capsys):
    argv = ["study", "--seeds", "0", "1", "--epochs", "2", "--n-basis", "2", "--widths", "4"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    study = json.loads((tmp_path / "study.json").read_text())
    rows = set(study["summary"])
    assert {"rk4", "resnet", "lm-resnet", "rk4-refined", "rk4 half both"} <= rows
    assert len(study["per_seed"]) == 2
    mean, sd = study["summary"]["rk4"]["mca"]
    assert 0 <= mean <= 1 and sd >= 0
    assert "± " in (tmp_path / "study.md").read_text()
