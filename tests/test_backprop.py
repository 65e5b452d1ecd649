"""Backprop modes (checkpoint, adjoint) and the multistep schemes (ab2, lm)."""

import copy
import json
import math

import pytest
import torch

import contnet
from contnet.schemes import fitted_order

from .helpers import devices
from .test_schemes import _exact, _initial, _rate


def _block(scheme, n_steps, basis="fem_linear", K=3, norm=None, act="tanh", backprop="direct"):
    unit = contnet.ConvUnit(3, n_basis=K, basis=basis, norm=norm, act=act).double()
    return contnet.ContinuousBlock(unit, scheme=scheme, n_steps=n_steps, backprop=backprop).double()


def _grads(block, x, mode):
    block.backprop = mode
    params = [x, *block.parameters()]
    out = block(x)
    g = torch.autograd.grad((out * torch.sin(out)).sum(), params, allow_unused=True)
    return torch.cat(
        [(v if v is not None else torch.zeros_like(p)).flatten() for v, p in zip(g, params)]
    )


def _norms(block):
    return [m for m in block.modules() if isinstance(m, contnet.TimeBatchNorm2d)]


def _reset_stats(block):
    for m in _norms(block):
        m.running_mean.zero_()
        m.running_var.fill_(1.0)


@pytest.mark.parametrize("scheme", ["euler", "rk4", "rk4_38", "ssprk3", "tsit5", "ab2", "lm"])
@pytest.mark.parametrize("norm", [None, "batch"])
@pytest.mark.parametrize("basis,K", [("fem_linear", 3), ("piecewise_constant", 4)])
def test_checkpoint_gradients_equal_direct(scheme, norm, basis, K):
    block = _block(scheme, 6, basis, K, norm).train()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    _reset_stats(block)
    direct = _grads(block, x, "direct")
    stats_direct = [m.running_mean.clone() for m in _norms(block)]
    _reset_stats(block)
    ckpt = _grads(block, x, "checkpoint")
    stats_ckpt = [m.running_mean.clone() for m in _norms(block)]
    assert (ckpt - direct).abs().max() <= 1e-10 * direct.abs().max()
    for a, b in zip(stats_direct, stats_ckpt):  # counted once (twice would differ by ~momentum)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scheme,order", [("euler", 1), ("heun", 2)])
def test_adjoint_error_falls_with_steps(scheme, order):
    torch.manual_seed(0)
    block = _block(scheme, 4)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    steps = [8, 16, 32]
    errs = []
    for n in steps:
        block.n_steps = n
        direct = _grads(block, x, "direct")
        errs.append(((_grads(block, x, "adjoint") - direct).norm() / direct.norm()).item())
    assert errs[0] > errs[1] > errs[2]
    assert fitted_order(steps, errs) > order - 0.3, errs


@pytest.mark.parametrize("K", [3, 5])
def test_adjoint_heun_order_three_inside_cells(K):
    # n_steps a multiple of K: every step inside one cell of a piecewise-constant basis,
    # the steps taken back read that cell too (K not a power of two: the edges k / K are
    # not exact in binary), and a Heun step and its reverse agree to O(h^3)
    torch.manual_seed(0)
    block = _block("heun", K, basis="piecewise_constant", K=K)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    steps = [K, 2 * K, 4 * K]
    errs = []
    for n in steps:
        block.n_steps = n
        direct = _grads(block, x, "direct")
        errs.append(((_grads(block, x, "adjoint") - direct).norm() / direct.norm()).item())
    assert fitted_order(steps, errs) > 2.7, errs


def test_adjoint_with_batch_norm_in_training_mode():
    block = _block("heun", 16, norm="batch").train()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    _reset_stats(block)
    direct = _grads(block, x, "direct")
    stats = [m.running_var.clone() for m in _norms(block)]
    _reset_stats(block)
    adjoint = _grads(block, x, "adjoint")
    assert (adjoint - direct).norm() / direct.norm() < 1e-2
    for a, m in zip(stats, _norms(block)):
        torch.testing.assert_close(m.running_var, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["checkpoint", "adjoint"])
def test_recomputation_replays_dropout_masks(mode, device):
    # a rate that draws random numbers: each recomputed step (and, in adjoint, each step
    # back) draws what its forward drew, and the caller's random streams (CPU and the
    # device's) are left where they were
    f64 = {"dtype": torch.float64, "device": device}
    w = (0.5 * torch.randn(4, 4, **f64)).requires_grad_()
    drop = torch.nn.Dropout(0.5)
    f = lambda t, x: drop(torch.tanh(x @ w)) * (1 + t)  # noqa: E731
    x0 = torch.randn(3, 4, **f64, requires_grad=True)

    def states():
        return [torch.get_rng_state()] + (
            [torch.cuda.get_rng_state(x0.device)] if x0.is_cuda else []
        )

    def set_states(s):
        torch.set_rng_state(s[0])
        if x0.is_cuda:
            torch.cuda.set_rng_state(s[1], x0.device)

    n_steps = 4 if mode == "checkpoint" else 16  # adjoint: an error falling with the steps
    start = states()
    out = contnet.odeint(f, x0, scheme="rk4", n_steps=n_steps)
    ref = torch.autograd.grad((out * out).sum(), [x0, w])
    set_states(start)
    ck_out = contnet.odeint(f, x0, scheme="rk4", n_steps=n_steps, backprop=mode, params=[w])
    following = states()
    ck = torch.autograd.grad((ck_out * ck_out).sum(), [x0, w])
    assert all(map(torch.equal, states(), following))  # backward draws nothing of its own
    torch.testing.assert_close(ck_out, out, rtol=0, atol=0)
    for a, b in zip(ref, ck):
        if mode == "checkpoint":
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:  # approximate by design (0.3-3e-2 here); other masks in the steps back: ~0.1
            assert (a - b).norm() <= 5e-2 * a.norm()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["checkpoint", "adjoint"])
def test_recomputed_steps_run_under_the_forwards_autocast(mode, device):
    # forward under bfloat16 autocast, backward outside it (as a training loop does): the
    # recomputed steps run their convolutions in bfloat16 again
    unit = contnet.ConvUnit(4, n_basis=2, norm=None, act="tanh").to(device)
    block = contnet.ContinuousBlock(unit, scheme="heun", n_steps=4)
    x = torch.randn(2, 4, 6, 6, device=device)
    seen = []
    handle = unit.conv1.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    grads = {}
    try:
        for backprop in ("direct", mode):
            block.backprop = backprop
            with torch.autocast(device, dtype=torch.bfloat16):
                out = block(x)
            grads[backprop] = torch.autograd.grad(out.float().square().sum(), unit.conv1.weight)[0]
    finally:
        handle.remove()
    assert set(seen) == {torch.bfloat16}, seen
    rel = ((grads[mode] - grads["direct"]).norm() / grads["direct"].norm()).item()
    assert rel < (1e-6 if mode == "checkpoint" else 5e-2), rel


def test_backprop_modes_through_odeint_with_params():
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    f = lambda t, x: torch.tanh(x @ w) * (1 + t)  # noqa: E731
    x0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ref = torch.autograd.grad(contnet.odeint(f, x0, scheme="rk4", n_steps=8).sum(), [x0, w])
    ck = torch.autograd.grad(
        contnet.odeint(f, x0, scheme="rk4", n_steps=8, backprop="checkpoint", params=[w]).sum(),
        [x0, w],
    )
    for a, b in zip(ref, ck):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    def adjoint_error(n_steps):
        direct = contnet.odeint(f, x0, scheme="rk4", n_steps=n_steps).sum()
        adjoint = contnet.odeint(
            f, x0, scheme="rk4", n_steps=n_steps, backprop="adjoint", params=[w]
        ).sum()
        pairs = zip(torch.autograd.grad(direct, [x0, w]), torch.autograd.grad(adjoint, [x0, w]))
        return max(((a - b).norm() / a.norm()).item() for a, b in pairs)

    # approximate, and better with more steps (over 200 random draws: at most 1.2e-3 at 8
    # steps, and at least 25x smaller at 16)
    e8, e16 = adjoint_error(8), adjoint_error(16)
    assert e8 <= 1e-2 and e16 <= e8 / 8, (e8, e16)


@pytest.mark.parametrize("scheme", ["rk4", "ab2", "lm"])
def test_checkpoint_second_derivatives_equal_direct(scheme):
    # a gradient penalty through backprop="checkpoint": the backward under create_graph
    # recomputes the pass with a graph, so the gradient differentiates again as direct's;
    # batch-norm statistics are still updated once (under the reference ops: the fused
    # epilogue has no second derivative). The block is applied twice (weights tied): the
    # second pass's input has a history that reads the same parameters
    torch.manual_seed(0)
    block = _block(scheme, 4, "fem_linear", 2, norm="batch").train()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    leaves = [x, *block.parameters()]
    first, second, stats = {}, {}, {}
    with contnet.ops.use_reference():
        for mode in ("direct", "checkpoint"):
            _reset_stats(block)
            block.backprop = mode
            g = torch.autograd.grad(block(block(x)).square().sum(), leaves, create_graph=True)
            first[mode] = g
            second[mode] = torch.autograd.grad(g[0].square().sum(), leaves, allow_unused=True)
            stats[mode] = [m.running_mean.clone() for m in _norms(block)]
    for a, b in zip(first["direct"], first["checkpoint"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    used = 0
    for a, b in zip(second["direct"], second["checkpoint"]):
        assert (a is None) == (b is None)
        if a is not None:
            used += 1
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert used >= 3 and second["direct"][0].abs().max() > 0
    for a, b in zip(stats["direct"], stats["checkpoint"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _peak(fn):
    from contnet.bench.common import peak_bytes

    return peak_bytes(fn, "cpu")


@pytest.mark.parametrize("mode", ["checkpoint", "adjoint"])
def test_func_transforms_step_as_direct(mode):
    """Inside torch.func transforms checkpoint and adjoint step as direct (their
    autograd.Function cannot be transformed): grad of a functional_call, vmap over a batch
    and jvp give direct's results, and the block runs stepwise again outside them."""
    torch.manual_seed(0)
    unit = contnet.ConvUnit(3, n_basis=3, basis="fem_linear", act="tanh").double()
    block = contnet.ContinuousBlock(unit, scheme="rk4", n_steps=3, backprop=mode)
    twin = copy.deepcopy(block)
    twin.backprop = "direct"
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    params = {k: v.detach() for k, v in block.named_parameters()}

    def loss(blk, p):
        return torch.func.functional_call(blk, p, (x,)).square().sum()

    g = torch.func.grad(lambda p: loss(block, p))(params)
    ref = torch.func.grad(lambda p: loss(twin, p))(params)
    assert set(g) == set(params)
    for k in params:
        torch.testing.assert_close(g[k], ref[k], rtol=1e-12, atol=1e-12)
    # a vmapped call with grad mode on (the Function would run) equals the batched call
    rows = torch.func.vmap(lambda r: block(r.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(rows, twin(x), rtol=1e-12, atol=1e-12)
    tangent = torch.randn_like(x)
    out, jvp = torch.func.jvp(block, (x,), (tangent,))
    ref_out, ref_jvp = torch.func.jvp(twin, (x,), (tangent,))
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jvp, ref_jvp, rtol=1e-12, atol=1e-12)
    # outside the transform: stepwise again (adjoint's gradient is approximate)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(block(xg).square().sum(), xg)
    (rx,) = torch.autograd.grad(twin(xg).square().sum(), xg)
    err = (gx - rx).abs().max().item()
    assert (err < 1e-12) if mode == "checkpoint" else (1e-12 < err < 1e-2)


def test_activation_memory_by_mode():
    # the peak allocated over forward and backward: adjoint's is the same at 4 and 16 steps
    # (no per-step random states kept when the rate draws none), checkpoint's grows by a
    # state a step
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    peaks = {}
    for mode in ("direct", "checkpoint", "adjoint"):
        block = _block("rk4", 4).float()
        block.backprop = mode
        for n in (4, 16):
            block.n_steps = n
            peaks[mode, n] = _peak(
                lambda b=block: torch.autograd.grad(b(x).sum(), [x, *b.parameters()])
            )
    state = x.numel() * x.element_size()
    assert peaks["adjoint", 16] == peaks["adjoint", 4]  # flat in n_steps
    ckpt_slope = (peaks["checkpoint", 16] - peaks["checkpoint", 4]) / 12
    direct_slope = (peaks["direct", 16] - peaks["direct", 4]) / 12
    assert 0.5 * state <= ckpt_slope <= 2 * state  # one state per step
    assert direct_slope > 8 * ckpt_slope


def test_backprop_mode_errors():
    block = _block("ab2", 4)
    with pytest.raises(ValueError, match="adjoint' needs a Runge-Kutta scheme"):
        block.backprop = "adjoint"
        block(torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)).sum().backward()
    with pytest.raises(ValueError, match="trajectory=True needs backprop='direct'"):
        contnet.odeint(
            lambda t, x: x,
            torch.randn(2, requires_grad=True),
            backprop="checkpoint",
            trajectory=True,
        )
    x = torch.randn(2, dtype=torch.float64, requires_grad=True)
    out = contnet.odeint(lambda t, x: torch.sin(x), x, backprop="adjoint", n_steps=2, params=[])
    with pytest.raises(RuntimeError, match="backprop='adjoint' takes no create_graph"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    # a plain function's own tensors are out of sight: refused, not silently without gradients
    lin = torch.nn.Linear(2, 2).double()
    for mode in ("checkpoint", "adjoint"):
        with pytest.raises(ValueError, match="f is a plain function, whose tensors it cannot see"):
            contnet.odeint(lambda t, x: torch.tanh(lin(x)), x, backprop=mode, n_steps=2)
        out = contnet.odeint(lambda t, x: torch.tanh(lin(x)), x, backprop=mode, n_steps=2,
                             params=list(lin.parameters()))  # fmt: skip
        out.sum().backward()
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
        lin.zero_grad()


# ---------------------------------------------------------------------------- multistep
def test_ab2_order_two():
    x0 = _initial()
    steps = [16, 32, 64, 128]
    errs = [
        (contnet.odeint(_rate, x0, scheme="ab2", n_steps=n) - _exact(1.0, x0)).abs().max().item()
        for n in steps
    ]
    assert abs(fitted_order(steps, errs) - 2) < 0.3


def test_lm_converges_at_order_one_to_its_modified_equation():
    """With constant k, x_{n+1} = (1-k) x_n + k x_{n-1} + h f is consistent with
    (1 + k) x' = f: order 1 (Lu et al. 2018)."""
    k = -0.3
    x0 = torch.rand(4, dtype=torch.float64) + 0.5
    exact = x0 * math.exp(-1.0 / (1 + k))  # x' = -x / (1 + k)
    steps = [32, 64, 128, 256]
    errs = []
    for n in steps:
        out = contnet.odeint(
            lambda t, x: -x,
            x0,
            scheme="lm",
            n_steps=n,
            lm_k=torch.full((n,), k, dtype=torch.float64),
        )
        errs.append((out - exact).abs().max().item())
    assert abs(fitted_order(steps, errs) - 1) < 0.3, errs


def test_lm_gradcheck_of_learnable_k():
    f = lambda t, x: torch.tanh(x) * (1 + t)  # noqa: E731
    x0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    k = (torch.rand(5, dtype=torch.float64) * -0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, k: contnet.odeint(f, x, scheme="lm", n_steps=5, lm_k=k), (x0, k)
    )
    block = _block("lm", 4, basis="piecewise_constant", K=4)
    assert (
        block.lm.theta.shape == (4,)
        and (block.lm.theta <= 0).all()
        and (block.lm.theta >= -0.1).all()
    )
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    (gk,) = torch.autograd.grad(block(x).square().sum(), block.lm.theta)
    assert gk.abs().sum() > 0
    contnet.refine(block)
    assert block.lm.theta.shape == (8,)  # k(t) is refined with the unit
    with pytest.raises(ValueError, match="build the block with scheme='lm'"):
        _block("rk4", 4).scheme = "lm"
    with pytest.raises(ValueError, match="needs lm_k"):
        contnet.odeint(f, x0, scheme="lm")


def test_lm_resnet_trains_on_digits_from_the_cli(tmp_path, capsys):
    from contnet import cli
    from contnet import training as train

    out = tmp_path / "lm"
    args = ["train", "--scheme", "lm", "--n-basis", "1", "--epochs", "4", "--refine-at", "2"]
    assert cli.main([*args, "--widths", "8", "16", "--out", str(out), "--no-progress"]) == 0
    payload = train.load_checkpoint(out / "checkpoint.pt")
    hist = payload["meta"]["history"]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"] and hist[-1]["test_acc"] > 0.9
    model = train.model_from_checkpoint(payload)
    assert model.stages[0].scheme == "lm" and model.stages[0].lm.theta.shape == (2,)
    # eval and compress try the model's own scheme by default, then the Runge-Kutta ones
    saved = tmp_path / "small.pt"
    compress = ["compress", "--checkpoint", str(out / "checkpoint.pt"), "--steps", "2"]
    assert cli.main([*compress, "--max-drop", "100", "--save", str(saved)]) == 0
    result = json.loads((out / "compress.json").read_text())
    assert result["candidates"][0]["scheme"] == "lm"
    assert {c["scheme"] for c in result["candidates"]} == {"lm", "euler", "midpoint", "rk4"}
    assert saved.is_file()
    none = tmp_path / "none.pt"  # a negative budget is refused by name; nothing is written
    with pytest.raises(SystemExit):
        cli.main([*compress, "--max-drop", "-101", "--save", str(none)])
    assert not none.exists() and "--max-drop" in capsys.readouterr().err
