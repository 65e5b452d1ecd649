"""The fused ops wired into odeint and ContinuousBlock: same results as the pure-PyTorch
path to rounding, one interpolation launch per forward, training, torch.compile."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

import contnet
from contnet import integrate, ops

UNITS = [
    dict(preact=True, norm="batch"),  # fused tail: identity act
    dict(preact=False, norm=None, act="tanh"),  # fused tail: bias + tanh
    dict(preact=False, norm="batch"),  # not fusable: batch norm in the tail
    dict(preact=False, norm=None, bias=True),  # fused tail: bias + relu (a mask for backward)
]
BASES = [("piecewise_constant", 3), ("fem_linear", 3), ("legendre", 2), ("piecewise_linear", 4)]


def _block(basis, K, unit, scheme, n_steps=3):
    u = contnet.ConvUnit(4, n_basis=K, basis=basis, **unit).double()
    return contnet.ContinuousBlock(u, scheme=scheme, n_steps=n_steps)


@pytest.mark.parametrize("basis,K", BASES)
@pytest.mark.parametrize("unit", UNITS, ids=["preact", "tanh", "bn-tail", "relu"])
@pytest.mark.parametrize(
    "scheme", ["euler", "heun", "rk3", "rk4", "rk4_38", "bosh3", "dopri5", "ab2"]
)
def test_block_matches_reference_path(basis, K, unit, scheme):
    block = _block(basis, K, unit, scheme)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    params = list(block.parameters())

    def run():
        out = block(x)
        return (out, *torch.autograd.grad((out * torch.cos(out)).sum(), [x, *params]))

    fused = run()
    with ops.use_reference():
        ref = run()
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and the plain path: the unit called as a rate, no fused tail, no weight table
    plain = contnet.odeint(lambda t, x: block.unit(t, x), x, scheme=scheme, n_steps=3)
    torch.testing.assert_close(fused[0], plain, rtol=1e-12, atol=1e-12)


def test_fused_tail_is_used_and_weights_are_one_launch(monkeypatch):
    calls = {"epilogue": 0, "basis_interp": 0}

    def counting(name, f):
        def counted(*args, **kw):
            calls[name] += 1
            return f(*args, **kw)

        return counted

    # the epilogue runs through the per-step kernel, or the promoting wrapper
    kernel = ops.epilogue_kernel
    monkeypatch.setattr(ops, "epilogue_kernel", lambda x: counting("epilogue", kernel(x)))
    monkeypatch.setattr(ops, "epilogue_unchecked", counting("epilogue", ops.epilogue_unchecked))
    monkeypatch.setattr(ops, "basis_interp", counting("basis_interp", ops.basis_interp))
    block = _block("fem_linear", 3, UNITS[0], "rk4", n_steps=4)
    block(torch.randn(2, 4, 5, 5, dtype=torch.float64))
    assert calls == {"epilogue": 4 * 4, "basis_interp": 1}
    calls.update(epilogue=0, basis_interp=0)
    _block("piecewise_constant", 3, UNITS[0], "rk4")(torch.randn(2, 4, 5, 5, dtype=torch.float64))
    assert calls["basis_interp"] == 0  # piecewise constant: views of the nodes


def test_fused_step_promotes_mixed_dtypes():
    """A stage whose pre-tail output has another dtype than the state (autocast) goes
    through the promoting epilogue, and so does the rest of its step: the same as the
    unfused step computing in the promoted dtype."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 3, 1, 1, dtype=torch.float64)
    calls = []

    def split(t, xi):
        y = torch.nn.functional.conv2d(xi, w) * (1 + t)
        calls.append(xi.dtype)
        return (y.float() if len(calls) == 2 else y), None, "tanh", 0.5

    class Rate:
        fusable = True

        def __init__(self, split):
            self.split = split

        def __call__(self, t, xi):
            y, _, _, scale = split(t, xi)
            return scale * torch.tanh(y.to(torch.float64))

    tab = contnet.schemes.get("rk4")
    times, h = contnet.schemes.stage_times(tab, 1)[0], 1.0
    fused = integrate.rk_step(Rate(split), x, times, h, tab)
    calls.clear()
    plain = integrate.rk_step(Rate(split).__call__, x, times, h, tab)
    assert fused.dtype == torch.float64
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("where", ["conv1", "conv2", "pre", "global", "subclass"])
def test_stage_convolutions_keep_module_hooks(where):
    """Stages apply the convolutions to the stage weights without module dispatch only
    where that skips nothing: with a hook on either convolution, a global module hook or a
    subclass's own forward, every stage goes through the module (the hook sees all of
    them) with the same result, gradients included. (A pre-hook may change the weights:
    those stages read them at the call, not from the table; a global hook also sees the
    unit, whose tail is then not fused: both the same to rounding.)"""
    block = _block("fem_linear", 3, UNITS[1], "rk4", n_steps=2)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    params = list(block.parameters())

    def run():
        out = block(x)
        return (out, *torch.autograd.grad((out * out).sum(), [x, *params]))

    direct = run()
    seen = []

    def hook(module, *args):
        if isinstance(module, contnet.TimeConv2d):
            seen.append(module)

    class Counting(contnet.TimeConv2d):
        def forward(self, t, x, *args, **kwargs):
            hook(self)
            return super().forward(t, x, *args, **kwargs)

    if where == "subclass":  # a subclass's forward is not skipped either
        block.unit.conv2.__class__ = Counting
        handle = None
    elif where == "global":
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
    elif where == "pre":
        handle = block.unit.conv1.register_forward_pre_hook(hook)
    else:
        handle = getattr(block.unit, where).register_forward_hook(hook)
    try:
        hooked = run()
    finally:
        if handle is not None:
            handle.remove()
    stages = 2 * 4
    assert len(seen) == (2 * stages if where == "global" else stages)
    tol = 1e-13 if where in ("pre", "global") else 0.0
    for a, b in zip(direct, hooked):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    seen.clear()
    block.unit.conv2.__class__ = contnet.TimeConv2d
    block(x)
    assert not seen  # hooks removed: the direct path again


def _train(use_reference, steps=5):
    torch.manual_seed(1234)
    block = _block("fem_linear", 2, UNITS[0], "rk4", n_steps=2)
    head = torch.nn.Linear(4, 3).double()
    opt = torch.optim.SGD([*block.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    x = torch.randn(8, 4, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    losses = []
    with ops.use_reference(use_reference):
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(head(block(x).mean((2, 3))), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def test_training_with_ops_equals_reference_path():
    fused, ref = _train(False), _train(True)
    assert fused[-1] < fused[0]
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "basis,K,unit,channels_last",
    [
        ("piecewise_constant", 2, 0, False),
        ("fem_linear", 3, 0, False),
        ("fem_linear", 3, 3, True),  # relu's mask, channels_last weights read in place
    ],
)
def test_torch_compile_fullgraph_matches_eager(basis, K, unit, channels_last):
    torch._dynamo.reset()
    block = _block(basis, K, UNITS[unit], "rk4", n_steps=2).train()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    params = list(block.parameters())
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out_c = compiled(x)
    gc = torch.autograd.grad(out_c.square().sum(), [x, *params])
    out_e = block(x)
    ge = torch.autograd.grad(out_e.square().sum(), [x, *params])
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_compiled_autograd_traces_the_fused_nodes():
    """Compiled autograd (the backward graph captured by dynamo) runs through the fused
    step's autograd nodes (the epilogue's, with bias and a non-identity activation, and the
    weight interpolation's) and gives eager autograd's gradients."""
    from torch._dynamo import compiled_autograd

    enable = getattr(compiled_autograd, "_enable", None) or compiled_autograd.enable
    torch._dynamo.reset()
    block = _block("fem_linear", 3, UNITS[1], "rk4", n_steps=2)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    wrt = [x, *block.parameters()]
    eager = torch.autograd.grad(block(x).square().sum(), wrt)
    out = block(x)  # an eager forward: the graph holds contnet's own nodes
    counters = torch._dynamo.utils.counters["compiled_autograd"]
    before = counters["captures"]
    with enable(torch.compile(backend="eager")):
        traced = torch.autograd.grad(out.square().sum(), wrt)
    assert counters["captures"] == before + 1  # the backward ran as a captured graph
    for a, b in zip(traced, eager):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _hand_rk4(unit, x, n_steps):
    """The unit called as a module at every stage time of classic rk4 (no table, no fused
    tail): what a block must equal whatever hooks or subclasses the unit has."""
    tab = contnet.schemes.get("rk4")
    h = 1.0 / n_steps
    for times in contnet.schemes.stage_times(tab, n_steps):
        ks = []
        for i, t in enumerate(times):
            xi = x + h * sum(a * k for a, k in zip(tab.a[i][:i], ks)) if i else x
            ks.append(unit(t, xi))
        x = x + h * sum(b * k for b, k in zip(tab.b, ks))
    return x


@pytest.mark.parametrize("basis", ["piecewise_constant", "fem_linear"])
@pytest.mark.parametrize("backprop", ["direct", "checkpoint"])
def test_unit_hooks_and_subclass_forward_are_not_skipped(basis, backprop):
    """The fused tail calls the unit's split, not the unit: with a hook on the unit or a
    subclass's own forward, every stage calls the unit instead."""
    unit = contnet.ConvUnit(4, n_basis=2, basis=basis, norm=None, act="tanh").double()
    block = contnet.ContinuousBlock(unit, scheme="rk4", n_steps=2, backprop=backprop)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    seen = []
    handle = unit.register_forward_hook(lambda m, args, out: seen.append(args[0]) or 2 * out)
    try:
        torch.testing.assert_close(block(x), _hand_rk4(unit, x, 2), rtol=1e-12, atol=1e-12)
    finally:
        handle.remove()
    assert len(seen) == 2 * (2 * 4)  # the block's 8 stages, then the hand loop's

    class Damped(contnet.ConvUnit):
        def forward(self, t, x, weights=None):
            return 0.0 * super().forward(t, x, weights)

    unit.__class__ = Damped
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("basis", ["piecewise_constant", "fem_linear"])
@pytest.mark.parametrize("backprop", ["direct", "checkpoint", "adjoint"])
def test_weights_recomputed_by_hooks_and_parametrizations(basis, backprop):
    """A forward pre-hook that recomputes a weight (legacy weight_norm) and a
    parametrization both take effect at every stage, gradients included."""
    from torch.nn.utils import parametrize

    unit = contnet.ConvUnit(4, n_basis=2, basis=basis, norm=None, act="tanh").double()
    block = contnet.ContinuousBlock(unit, scheme="rk4", n_steps=2, backprop=backprop)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)

    class Scaled(torch.nn.Module):
        def forward(self, w):
            return 1.5 * w

    parametrize.register_parametrization(unit.conv1, "weight", Scaled())
    out = block(x)
    ref = _hand_rk4(unit, x, 2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    params = list(unit.parameters())
    g = torch.autograd.grad(out.square().sum(), params)
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    g, g_ref = torch.cat([v.flatten() for v in g]), torch.cat([v.flatten() for v in g_ref])
    tol = 2e-2 if backprop == "adjoint" else 1e-12  # adjoint: approximate by design
    assert (g - g_ref).norm() <= tol * g_ref.norm()
    parametrize.remove_parametrizations(unit.conv1, "weight")

    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(unit.conv2, dim=1)
    before = block(x)
    with torch.no_grad():
        unit.conv2.weight_g.mul_(2.0)
    after = block(x)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, _hand_rk4(unit, x, 2), rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(block(x).square().sum(), [unit.conv2.weight_g, unit.conv2.weight_v])
    assert all(torch.isfinite(v).all() and v.abs().max() > 0 for v in g)


def test_block_copies_and_pickles_after_a_func_transform():
    """The interpolation coefficients built inside torch.func.grad belong to the transform:
    the block does not keep them, so it still deep-copies and pickles after it (an EMA copy,
    a checkpoint), and its next pass is the same."""
    unit = contnet.ConvUnit(3, n_basis=3, basis="fem_linear", norm=None).double()
    block = contnet.ContinuousBlock(unit, n_steps=3)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    params = {k: v.detach() for k, v in block.named_parameters()}
    g = torch.func.grad(lambda p: torch.func.functional_call(block, p, (x,)).square().sum())(params)
    assert set(g) == set(params)
    twin = copy.deepcopy(block)
    buffer = io.BytesIO()
    torch.save(block, buffer)
    torch.testing.assert_close(twin(x), block(x), rtol=0, atol=0)


def test_double_backward_and_func_transforms():
    """A second derivative through the fused epilogue is an error that says what to do, and
    works under ops.use_reference(); torch.func transforms run the references by
    themselves: grad and vmap give what autograd and the batched call give."""
    unit = contnet.ConvUnit(4, n_basis=2, norm=None, act="tanh").double()
    block = contnet.ContinuousBlock(unit, scheme="rk4", n_steps=2)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

    def penalty():
        (g,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), unit.conv1.weight)[0]

    if ops.backend().startswith("extension"):
        with pytest.raises(RuntimeError, match=r"has no derivative: .* contnet.ops.use_reference"):
            penalty()
    with ops.use_reference():
        second = penalty()
        assert torch.isfinite(second).all() and second.abs().max() > 0
    g = torch.func.grad(lambda x: block(x).square().sum())(x.detach())
    (ref,) = torch.autograd.grad(block(x).square().sum(), x)
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)
    rows = torch.func.vmap(lambda r: block(r.unsqueeze(0)).squeeze(0))(x.detach())
    torch.testing.assert_close(rows, block(x.detach()), rtol=1e-12, atol=1e-12)


def test_a_block_without_a_fusable_tail_does_not_turn_fusion_off_for_others(monkeypatch):
    # pinned: the first rate of a type once decided for every later one whether it could
    # fuse, so a unit with a batch norm in its tail run first left every block unfused
    calls = []
    kernel = ops.epilogue_kernel
    monkeypatch.setattr(ops, "epilogue_kernel", lambda x: (calls.append(1), kernel(x))[1])
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    contnet.ContinuousBlock(contnet.ConvUnit(4, norm="batch").double(), n_steps=2)(x)
    assert not calls  # its tail is not fusable
    contnet.ContinuousBlock(contnet.ConvUnit(4, preact=True).double(), n_steps=2)(x)
    assert calls
