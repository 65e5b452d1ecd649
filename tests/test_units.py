"""Every residual unit, and every time-dependent layer used as a rate, integrated by a
block: refinement and projection exact, gradients (float64 gradcheck, checkpoint equal to
direct, adjoint converging), the scheme's order, torch.compile, autocast, state_dict."""

import copy

import pytest
import torch

import contnet
from contnet.schemes import fitted_order

from .cases import LAYERS, UNITS, randomise, state
from .helpers import autocast_errors
from .test_backprop import _grads

RATES = {**LAYERS, **UNITS}


def _is_bn(name):
    return name.startswith("TimeBatchNorm")


def _block(name, K=2, basis="fem_linear", scheme="rk4", n_steps=4, seed=0, **kw):
    build, shape = RATES[name]
    if _is_bn(name):
        K, basis = min(K, 2), "piecewise_constant"
    unit = randomise(build(K, basis).double(), seed)
    block = contnet.ContinuousBlock(unit, scheme=scheme, n_steps=n_steps, **kw)
    return block.eval(), state(shape)


@pytest.mark.parametrize("basis,K", [("piecewise_constant", 2), ("fem_linear", 3), ("legendre", 2)])
@pytest.mark.parametrize("name", list(RATES))
def test_refinement_leaves_the_output_unchanged(name, basis, K):
    block, x = _block(name, K, basis, n_steps=6)
    with torch.no_grad():
        before = block(x)
        contnet.refine(block, steps=False)
        after = block(x)
    assert block.unit.n_basis > K or _is_bn(name)
    torch.testing.assert_close(after, before, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    "basis,K", [("piecewise_constant", 2), ("piecewise_linear", 2), ("legendre", 2)]
)
@pytest.mark.parametrize("name", list(RATES))
def test_projection_is_exact_on_the_target_space(name, basis, K):
    block, x = _block(name, K, basis, n_steps=4)
    fine = copy.deepcopy(block)
    contnet.refine(fine, steps=False)
    contnet.refine(fine, steps=False)
    contnet.project(fine, block.unit.n_basis, basis, steps=False)
    with torch.no_grad():
        torch.testing.assert_close(fine(x), block(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(RATES))
def test_float64_gradcheck(name):
    block, x = _block(name, 2, "fem_linear", n_steps=2)
    block.train()
    names = [n for n, _ in block.named_parameters()]

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(block, dict(zip(names, ps))):
            return block(x)

    ps = [p.detach().requires_grad_() for p in block.parameters()]
    torch.autograd.gradcheck(f, (x.requires_grad_(), *ps))


@pytest.mark.parametrize("scheme,order", [("euler", 1), ("midpoint", 2), ("rk3", 3), ("rk4", 4)])
@pytest.mark.parametrize("name", list(RATES))
def test_drift_falls_at_the_schemes_order(name, scheme, order):
    block, x = _block(name, 3, "legendre", scheme="rk4", n_steps=1024)
    with torch.no_grad():
        ref = block(x)
        block.scheme, errs, steps = scheme, [], [16, 32, 64]
        for n in steps:
            block.n_steps = n
            errs.append(((block(x) - ref).norm() / ref.norm()).item())
    assert fitted_order(steps, errs) > order - 0.5, errs


@pytest.mark.parametrize("basis", ["piecewise_constant", "fem_linear"])
@pytest.mark.parametrize("name", list(RATES))
def test_checkpoint_gradients_equal_direct_and_adjoint_converges(name, basis):
    block, x = _block(name, 2, basis, scheme="euler", n_steps=4)
    x.requires_grad_()
    direct = _grads(block, x, "direct")
    ckpt = _grads(block, x, "checkpoint")
    assert (ckpt - direct).abs().max() <= 1e-10 * direct.abs().max()
    errs = []
    for n in (4, 16, 64):
        block.n_steps = n
        direct = _grads(block, x, "direct")
        errs.append(((_grads(block, x, "adjoint") - direct).norm() / direct.norm()).item())
    assert errs[2] < 0.5 * errs[1], errs  # (a short run may be exact already)


@pytest.mark.parametrize(
    "name, backend",
    [(name, "aot_eager") for name in RATES]
    + [
        pytest.param(name, "inductor", marks=pytest.mark.slow)
        for name in ("MLPUnit", "TransformerUnit", "time_dependent-attention")
    ],
)
def test_compile_fullgraph_matches_eager(name, backend):
    torch._dynamo.reset()
    block, x = _block(name, 2, "fem_linear", n_steps=2)
    block.train()
    x = x.requires_grad_()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    outs, grads = [], []
    for fn in (block, compiled):
        out = fn(x)
        outs.append(out)
        grads.append(
            torch.autograd.grad(out.square().sum(), [x, *block.parameters()], allow_unused=True)
        )
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads[0], grads[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(RATES))
def test_bf16_autocast_as_close_as_eager(name):
    block, x = _block(name, 2, "fem_linear", n_steps=4)
    fused, eager = autocast_errors(block, x.float(), torch.bfloat16)
    assert fused < 0.1 and fused <= 1.5 * eager + 1e-3, (fused, eager)


@pytest.mark.parametrize("name", list(RATES))
def test_state_dict_round_trip(name):
    block, x = _block(name, 2, "legendre", seed=5)
    other, _ = _block(name, 2, "legendre", seed=6)
    with torch.no_grad():
        assert (other(x) - block(x)).abs().max() > 0
        other.load_state_dict(block.state_dict())
        torch.testing.assert_close(other(x), block(x), rtol=0, atol=0)


def test_transformer_mask_reaches_every_stage():
    block, x = _block("TransformerUnit", 2, "fem_linear", n_steps=3)
    L = x.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    with torch.no_grad():
        masked = block(x, mask=causal)
        # causal: the first token sees only itself, whatever follows it
        x2 = x.clone()
        x2[:, 1:] = state(x2[:, 1:].shape, seed=9)
        torch.testing.assert_close(
            block(x2, mask=causal)[:, 0], masked[:, 0], rtol=1e-12, atol=1e-12
        )
        assert (block(x) - masked).abs().max() > 1e-6
        # the same through every backprop mode and without the stage table
        for mode in ("checkpoint", "adjoint"):
            block.backprop = mode
            torch.testing.assert_close(block(x, mask=causal), masked, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["MLPUnit", "TransformerUnit", "BottleneckUnit", "BottleneckUnit-post"]
)
def test_fused_tail_equals_the_unit(name):
    block, x = _block(name, 3, "fem_linear", n_steps=3)
    unit = block.unit
    assert unit.fusable
    with torch.no_grad():
        fused = block(x)
        with contnet.ops.use_reference():
            ref = block(x)
        hook = unit.register_forward_hook(lambda *a: None)  # a hook: no split, plain calls
        plain = block(x)
        hook.remove()
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: contnet.MLPUnit(0), ValueError, "dim must be >= 1"),
        (lambda: contnet.MLPUnit(4, hidden=-1), ValueError, "hidden must be >= 1"),
        (lambda: contnet.MLPUnit(4, act="swish2"), ValueError, "unknown act 'swish2'"),
        (lambda: contnet.MLPUnit(4, norm="batch"), ValueError, "unknown norm 'batch'"),
        (
            lambda: contnet.MLPUnit(4)(0.5, state((2, 5))),
            ValueError,
            r"x must have shape \(\.\.\., 4\) for dim=4",
        ),
        (
            lambda: contnet.TransformerUnit(6, 4),
            ValueError,
            r"dim \(6\) must be divisible by heads \(4\)",
        ),
        (lambda: contnet.TransformerUnit(4, 2, mlp_ratio=0), ValueError, "mlp_ratio must be > 0"),
        (
            lambda: contnet.TransformerUnit(4, 2, dropout=1.0),
            ValueError,
            r"dropout must be in \[0, 1\)",
        ),
        (
            lambda: contnet.TransformerUnit(4, 2)(0.5, state((2, 4))),
            ValueError,
            r"x must have shape \(B, L, 4\)",
        ),
        (
            lambda: contnet.TransformerUnit(4, 2)(0.5, state((1, 2, 4)), mask=[[1]]),
            TypeError,
            "mask must be a tensor",
        ),
        (lambda: contnet.BottleneckUnit(4, bottleneck=0), ValueError, "bottleneck must be >= 1"),
        (lambda: contnet.BottleneckUnit(4, norm="layer"), ValueError, "unknown norm 'layer'"),
        (lambda: contnet.BottleneckUnit(4)(0.5, state((2, 3, 3, 3))), ValueError, "channels=4"),
        (lambda: contnet.BottleneckUnit(8, groups=3), ValueError, "divisible by groups"),
    ],
)
def test_errors_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(RATES))
def test_cuda_matches_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    block, x = _block(name, 3, "fem_linear", n_steps=3)
    block.train()
    x = x.requires_grad_()
    cuda = copy.deepcopy(block).cuda()
    xc = x.detach().cuda().requires_grad_()
    outs = [block(x), cuda(xc)]
    grads = [
        torch.autograd.grad(o.square().sum(), [i, *b.parameters()])
        for o, i, b in zip(outs, (x, xc), (block, cuda))
    ]
    torch.testing.assert_close(outs[1].cpu(), outs[0], rtol=1e-9, atol=1e-9)
    for a, b in zip(*grads):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-8, atol=1e-8)
