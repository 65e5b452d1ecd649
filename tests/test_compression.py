"""Compression chooses on validation data, never on the test set; it takes any module
whose ContinuousBlocks it varies, with any metric, and data as tensors or batches."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import contnet
from contnet.evaluation import compression
from contnet.training import data


def _model(seed=0):
    """A user's model: a stem, two blocks of different families, sizes and step counts."""
    torch.manual_seed(seed)
    fem = contnet.ContinuousBlock(contnet.ConvUnit(4, n_basis=3, basis="fem_linear"), n_steps=4)
    leg = contnet.ContinuousBlock(
        contnet.ConvUnit(4, n_basis=4, basis="legendre", act="tanh"), scheme="midpoint", n_steps=2
    )
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        fem,
        leg,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    ).eval()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 10, (n,), generator=g)


# latency is a fixed cost in every test (conftest.fixed_cost_latency): the choices here do
# not depend on timing
FAST = {"log": lambda *a: None, "schemes": ["euler", "rk4"]}


def test_any_module_is_compressed_and_left_unchanged():
    model, val = _model(), _data(48, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = compression.compress(model, val, max_drop=100, **FAST)
    # the original: per-block sizes and steps; candidates cap each block's nodes
    assert r["original"]["n_basis"] == [3, 4] and r["original"]["n_steps"] == [4, 2]
    assert r["metric"] == "accuracy" and r["choice"] is not None
    sizes = [c["n_basis"] for c in r["candidates"]]
    assert sizes[0] == [3, 4] and 2 in sizes  # fem 3 -> 2 nodes and legendre 4 -> 2
    assert 1 not in sizes  # fem_linear takes no fewer than 2
    assert {str(c["n_steps"]) for c in r["candidates"]} == {"[4, 2]", "[2, 1]", "1"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    blocks = contnet.block.blocks_of(model)
    assert [b.n_steps for b in blocks] == [4, 2] and blocks[1].scheme == "midpoint"


def test_the_choice_is_made_on_validation_and_never_reads_the_test_set():
    model, val = _model(), _data(48, 1)
    seen = []

    def metric(out, y):  # records which data set each evaluation was on
        seen.append(len(y))
        return compression.accuracy(out, y)

    without = compression.compress(model, val, metric=metric, max_drop=0.5, **FAST)
    assert set(seen) == {48}
    seen.clear()
    test = _data(13, 2)
    with_test = compression.compress(model, val, test=test, metric=metric, max_drop=0.5, **FAST)
    # the test set is read twice (the original and the choice), after choosing
    assert seen.count(13) == 2 and seen[-2:] == [13, 13]
    keys = ("n_basis", "scheme", "n_steps")
    assert [without["choice"][k] for k in keys] == [with_test["choice"][k] for k in keys]
    # a test set that disagrees with everything changes nothing but the test figure
    flipped = (test[0], (test[1] + 1) % 10)
    other = compression.compress(model, val, test=flipped, metric=metric, max_drop=0.5, **FAST)
    assert [other["choice"][k] for k in keys] == [with_test["choice"][k] for k in keys]
    assert "test" in with_test["original"] and "test" in with_test["choice"]
    chosen = (with_test["choice"], with_test["original"])
    assert all("test" not in c for c in with_test["candidates"] if c not in chosen)


def test_a_users_metric_and_batches():
    model, (x, y) = _model(), _data(40, 3)

    def neg_loss(out, target):
        return -F.cross_entropy(out, target).item()

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    a = compression.compress(model, (x, y), metric=neg_loss, n_basis=[4, 2], steps=[2], **FAST)
    b = compression.compress(model, loader, metric=neg_loss, n_basis=[4, 2], steps=[2], **FAST)
    assert a["metric"] == "neg_loss"
    for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
        assert ca["val"] == pytest.approx(cb["val"], rel=1e-5)
        assert ca["drop_points"] == pytest.approx(100 * (a["original"]["val"] - ca["val"]))


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"model": nn.Linear(2, 2)}, ValueError, "model"),
        ({"model": "net"}, TypeError, "model"),
        ({"metric": 3}, TypeError, "metric"),
        ({"max_drop": float("nan")}, ValueError, "max_drop"),
        ({"max_drop": "1"}, TypeError, "max_drop"),
        ({"max_drop": -1}, ValueError, "max_drop"),
        ({"max_rel_drop": float("inf")}, ValueError, "max_rel_drop"),
        ({"higher_is_better": None}, TypeError, "higher_is_better"),
        ({"schemes": [["rk4"]]}, ValueError, "schemes"),  # one per block: two blocks
        ({"schemes": ["lm"]}, ValueError, "schemes"),  # no block owns a learned k(t)
        ({"steps": [[2, 0]]}, ValueError, "steps"),
        ({"schemes": []}, ValueError, "schemes"),
        ({"steps": []}, ValueError, "steps"),
        ({"val": []}, ValueError, "val"),
        ({"val": (b for b in [(torch.zeros(2, 1, 6, 6), torch.zeros(2))])}, TypeError, "val"),
        ({"min_run_time": -1}, ValueError, "min_run_time"),
        ({"n_basis": [1]}, ValueError, "n_basis"),  # fem_linear needs 2 nodes
        ({"n_basis": 2}, TypeError, "n_basis"),
        ({"steps": [0]}, ValueError, "steps"),
        ({"schemes": ["rk9"]}, ValueError, "schemes"),
        ({"val": torch.zeros(3)}, TypeError, "val"),
        ({"val": (torch.zeros(3, 1, 6, 6), torch.zeros(2))}, ValueError, "val"),
        ({"test": [1, 2, 3]}, TypeError, "test"),
        ({"latency_batch": 0}, ValueError, "latency_batch"),
        ({"rtols": [-1e-3]}, ValueError, "rtols"),
        ({"rtols": 1e-3}, TypeError, "rtols"),
        ({"rtols": [1e-3], "adaptive_scheme": "rk4"}, ValueError, "adaptive_scheme"),
        ({"adaptive_scheme": "rk4"}, ValueError, "adaptive_scheme"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, name):
    args = {"model": _model(), "val": _data(8, 1), **FAST, **kwargs}
    model, val = args.pop("model"), args.pop("val")
    with pytest.raises(error, match=rf"\b{name}\b"):
        compression.compress(model, val, **args)


def test_validation_split_is_fixed_stratified_and_nested():
    ds = data.load_digits()
    a, b = ds.with_validation(0.1), ds.with_validation(0.1)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert len(a.x_val) + len(a.x_train) == len(ds.x_train)
    # per class, a tenth (rounded) of its training images
    for c in range(10):
        n = int((ds.y_train == c).sum())
        assert int((a.y_val == c).sum()) == round(0.1 * n)
    # disjoint from what is trained on; a larger split contains a smaller one
    rows = lambda t: {tuple(r) for r in t.flatten(1).tolist()}  # noqa: E731
    assert not rows(a.x_val) & rows(a.x_train)
    assert rows(a.x_val) <= rows(ds.with_validation(0.25).x_val)
    assert ds.with_validation(0) is ds
    with pytest.raises(ValueError, match="fraction must be in"):
        ds.with_validation(1.0)


def _mixed(seed=0):
    """Blocks that differ in unit, basis, scheme and steps (the issue's model)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        contnet.ContinuousBlock(
            contnet.ConvUnit(8, n_basis=4, basis="fem_linear"), scheme="rk4", n_steps=8
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        contnet.ContinuousBlock(contnet.MLPUnit(8, n_basis=2), scheme="euler"),
        nn.Linear(8, 3),
    ).eval()


def test_blocks_keep_their_own_settings_and_the_original_is_a_candidate():
    model = _mixed()
    x = torch.randn(64, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    # no candidate loses anything on these labels but the original: it must be chosen
    r = compression.compress(model, (x, y), max_drop=0, log=lambda *a: None)
    o = r["original"]
    assert r["candidates"][0] is o and o["drop_points"] == 0 and o["val"] == 1.0
    assert o["blocks"] == [
        {"block": "1", "basis": "fem_linear", "n_basis": 4, "scheme": "rk4", "n_steps": 8,
         "rtol": None, "atol": None},
        {"block": "4", "basis": "piecewise_constant", "n_basis": 2, "scheme": "euler",
         "n_steps": 2, "rtol": None, "atol": None},
    ]  # fmt: skip
    assert o["scheme"] == ["rk4", "euler"] and o["n_steps"] == [8, 2]
    assert r["choice"] is not None and r["choice"]["drop_points"] <= 0
    # candidates vary each block from its own settings: halving its steps keeps its scheme
    halved = [c for c in r["candidates"] if c["n_steps"] == [4, 1] and c["n_basis"] == [4, 2]]
    assert any(c["scheme"] == ["rk4", "euler"] for c in halved)
    keys = [str(c["blocks"]) for c in r["candidates"]]
    assert len(keys) == len(set(keys))  # no candidate twice


def test_per_block_candidates_and_applying_the_choice():
    model, x = _mixed(1), torch.randn(32, 1, 6, 6)
    y = torch.randint(0, 3, (32,))
    r = compression.compress(
        model,
        (x, y),
        max_drop=100,
        schemes=[["midpoint", None]],
        steps=[[2, None]],
        n_basis=[4],
        log=lambda *a: None,
    )
    assert [c["blocks"][0]["scheme"] for c in r["candidates"]] == ["rk4", "midpoint"]
    assert [c["blocks"][1]["scheme"] for c in r["candidates"]] == ["euler", "euler"]
    assert r["candidates"][1]["n_steps"] == 2  # [2, 2]: the second block's own is 2
    chosen = r["candidates"][1]
    m = compression.apply_manifestation(copy.deepcopy(model), chosen)
    blocks = [b for _, b in compression.named_blocks(m)]
    assert [(b.scheme, b.n_steps) for b in blocks] == [("midpoint", 2), ("euler", 2)]
    assert compression.metric_on(m, (x, y)) == chosen["val"]


def test_a_lower_is_better_metric_and_a_relative_budget():
    model = _mixed(2)
    x = torch.randn(64, 1, 6, 6)
    with torch.no_grad():
        target = model(x) + 0.1 * torch.randn(64, 3)

    def mse(out, t):
        return F.mse_loss(out, t).item()

    r = compression.compress(
        model,
        (x, target),
        metric=mse,
        higher_is_better=False,
        max_rel_drop=0.5,
        log=lambda *a: None,
    )
    o, c = r["original"], r["choice"]
    assert r["higher_is_better"] is False and r["max_rel_drop"] == 0.5
    # a worse candidate has a larger MSE and a positive drop
    worst = max(r["candidates"], key=lambda c: c["val"])
    assert worst["val"] > o["val"] and worst["drop_points"] > 0
    assert worst["rel_drop"] == pytest.approx((worst["val"] - o["val"]) / o["val"])
    assert c["val"] <= 1.5 * o["val"]
    for cand in r["candidates"]:
        fits = cand["rel_drop"] <= 0.5
        assert fits == (cand["val"] <= 1.5 * o["val"] * (1 + 1e-12))
    # with no loss allowed the declared direction decides: a loss declared as it is keeps
    # the MSE at most the original's; declared the wrong way round (the default) a larger
    # MSE counts as a gain and the worse, faster candidate wins: declared, not guessed
    right = compression.compress(
        model, (x, target), metric=mse, higher_is_better=False, max_drop=0, log=lambda *a: None
    )
    wrong = compression.compress(model, (x, target), metric=mse, max_drop=0, log=lambda *a: None)
    assert right["choice"]["val"] <= o["val"] < wrong["choice"]["val"]


def test_a_choice_that_does_not_fit_leaves_the_model_as_it_was():
    model = _mixed(3)
    blocks = [b for _, b in compression.named_blocks(model)]
    before = [(b.unit.n_basis, b.scheme, b.n_steps) for b in blocks]
    good = {"block": "1", "basis": "fem_linear", "n_basis": 2, "scheme": "rk4", "n_steps": 1}
    for bad in (
        {**good, "block": "4", "scheme": "bogus"},
        {**good, "block": "4", "n_steps": 0},
        {**good, "block": "nosuch"},
        {"block": "4", "n_basis": 2},
    ):
        with pytest.raises(ValueError):
            compression.apply_manifestation(model, {"blocks": [good, bad]})
        assert [(b.unit.n_basis, b.scheme, b.n_steps) for b in blocks] == before


def test_an_adaptive_manifestation_is_a_candidate_and_applied_as_chosen(tmp_path):
    """rtols add, for every node count, the blocks run with an embedded pair to each
    tolerance; their rate evaluations are counted on the latency input; the choice is
    applied with its tolerance, and a checkpoint keeps it."""
    model, val = _model(), _data(48, 1)
    r = compression.compress(model, val, max_drop=100, rtols=[1e-2, 1e-3], **FAST)
    adaptive = [c for c in r["candidates"] if c["rtol"] is not None]
    assert {(c["rtol"], str(c["n_basis"])) for c in adaptive} == {
        (1e-2, "[3, 4]"), (1e-3, "[3, 4]"), (1e-2, "2"), (1e-3, "2")
    }  # fmt: skip
    assert all(
        c["scheme"] == "dopri5" and c["blocks"][0]["atol"] == c["rtol"] / 100 for c in adaptive
    )
    assert r["original"]["rtol"] is None and all(c["rate_evals"] >= 2 * 6 for c in adaptive)
    assert not any(b.rtol for b in contnet.block.blocks_of(model))  # left as it was
    chosen = next(c for c in adaptive if c["rtol"] == 1e-3 and c["n_basis"] == [3, 4])
    m = compression.apply_manifestation(copy.deepcopy(model), chosen)
    blocks = contnet.block.blocks_of(m)
    assert [(b.scheme, b.rtol, b.atol) for b in blocks] == [("dopri5", 1e-3, 1e-5)] * 2
    assert compression.metric_on(m, val) == chosen["val"]
    # back to fixed steps: the tolerance goes
    fixed = compression.apply_manifestation(m, r["original"])
    assert [(b.scheme, b.n_steps, b.rtol) for b in contnet.block.blocks_of(fixed)] == [
        ("rk4", 4, None), ("midpoint", 2, None)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="embedded pair"):
        bad = copy.deepcopy(chosen)
        bad["blocks"][0]["scheme"] = "rk4"
        compression.apply_manifestation(copy.deepcopy(model), bad)


def test_a_checkpoint_keeps_a_blocks_tolerance(tmp_path):
    from contnet import training as train

    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2).eval()
    first, second = contnet.block.blocks_of(net)
    first.scheme, first.rtol, first.atol, first.per_sample = "bosh3", 1e-3, 1e-6, True
    first.controller = contnet.integrate.Controller.integral(first_step=0.5, max_steps=50)
    path = train.save_checkpoint(tmp_path / "ck.pt", net)
    again = train.model_from_checkpoint(train.load_checkpoint(path)).eval()
    a, b = contnet.block.blocks_of(again)
    assert (a.scheme, a.rtol, a.atol, a.per_sample) == ("bosh3", 1e-3, 1e-6, True)
    assert a.controller == first.controller and b.controller is None
    assert b.rtol is None and b.scheme == second.scheme
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)
    # loading into a model built with a tolerance gives it the saved manifestation (none)
    first.rtol = None
    path = train.save_checkpoint(tmp_path / "fixed.pt", net)
    built = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2)
    contnet.block.blocks_of(built)[0].rtol = 1e-2
    train.load_model_state(train.load_checkpoint(path), built)
    assert contnet.block.blocks_of(built)[0].rtol is None


def test_a_tolerance_the_controller_cannot_meet_fails_its_candidate_only(tmp_path):
    """What a user's audit found: one adaptive candidate past max_steps stopped compress
    with a traceback and no report."""
    from contnet.integrate import Controller

    model, val = _model(), _data(16, 1)
    for b in contnet.block.blocks_of(model):
        b.controller = Controller(max_steps=3)
    r = compression.compress(model, val, max_drop=100, rtols=[1e-9], n_basis=[2], **FAST)
    failed = [c for c in r["candidates"] if "failed" in c]
    assert failed and all(c["rtol"] == 1e-9 and "max_steps=3" in c["failed"] for c in failed)
    assert r["choice"] is not None and "failed" not in r["choice"]
    assert len(r["candidates"]) > len(failed) + 1
    from contnet.cli.tables import compress_table

    assert "failed" in compress_table(r)


def test_a_candidates_rate_evaluations_count_ab2s_heun_start():
    """The fixed steps' count is odeint's (fixed_stats): ab2 evaluates once per step, and
    once more in its first step, which is Heun's."""
    from contnet.evaluation.candidates import rate_evals

    cand = [(2, "ab2", 4, None, None), (2, "rk4", 3, None, None)]
    assert rate_evals([None, None], cand, 8) == (4 + 1) + 4 * 3
