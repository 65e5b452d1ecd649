"""A trained model run to tolerances in the main job: the adaptive rows of eval (both modes,
the cost per input, the plot), the demo's line, settings restored."""

import json

import torch

import contnet
from contnet import cli
from contnet.evaluation import adaptive_table, fixed_evaluations


def test_adaptive_rows_cost_per_input_and_restore_the_blocks():
    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4, 4), n_basis=2).train()
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    before = [(b.scheme, b.n_steps, b.rtol, b.per_sample) for b in contnet.block.blocks_of(net)]
    table = adaptive_table(net, x, y, rtols=(1e-2, 1e-4), batch_size=8)
    assert [(r["rtol"], r["mode"]) for r in table["rows"]] == [
        (1e-2, "shared"), (1e-2, "per_input"), (1e-4, "shared"), (1e-4, "per_input")
    ]  # fmt: skip
    for r in table["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["drift"] < 1e-1
        assert 2 * 6 <= r["evaluations_mean"] <= r["evaluations_max"]  # two blocks, >= 1 step
    tight = [r["evaluations_mean"] for r in table["rows"] if r["rtol"] == 1e-4]
    loose = [r["evaluations_mean"] for r in table["rows"] if r["rtol"] == 1e-2]
    assert min(tight) > max(loose)
    after = [(b.scheme, b.n_steps, b.rtol, b.per_sample) for b in contnet.block.blocks_of(net)]
    assert after == before and net.training
    assert fixed_evaluations(net, "rk4", 4) == 2 * 16 and fixed_evaluations(net, "ab2", 4) == 10


def test_eval_adds_adaptive_rows_and_their_plot(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--widths", "4", "4", "--batch-size", "128", "--no-progress", "--out", str(out)]
    assert cli.main(["train", "--epochs", "1", *base]) == 0
    ck = str(out / "checkpoint.pt")
    quick = ["--schemes", "euler", "--steps", "1", "2", "--reference", "rk4", "8"]
    assert cli.main(["eval", "--checkpoint", ck, *quick, "--rtols", "1e-2", "1e-2", "1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "dopri5 to a tolerance" in printed and "per_input" in printed
    table = json.loads((out / "eval.json").read_text())
    assert [r["rtol"] for r in table["adaptive"]["rows"]] == [1e-2, 1e-2, 1e-3, 1e-3]
    assert table["fixed_evaluations"]["euler"] == {"1": 2, "2": 4}
    assert (out / "accuracy_evaluations.png").stat().st_size > 0
    (out / "accuracy_evaluations.png").unlink()
    assert cli.main(["eval", "--checkpoint", ck, *quick, "--rtols", "--adaptive-scheme",
                     "tsit5"]) == 0  # fmt: skip
    assert "adaptive" not in json.loads((out / "eval.json").read_text())
    assert not (out / "accuracy_evaluations.png").exists()
