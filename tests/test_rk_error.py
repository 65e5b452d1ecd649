"""rk_step_error (an adaptive step's new state and per-sample scaled error norm in one pass)
against its reference and eager PyTorch: dtypes x layouts x sizes, both forms (x_next
computed and given), non-finite operands, zero errors over zero scales, samples alone and
in a batch, errors naming the argument, opcheck and float64 gradcheck, CPU/CUDA parity."""

import math

import pytest
import torch

from contnet import ops

from .helpers import devices
from .op_cases import DTYPES, EPS, LAYOUTS, SHAPES, check_error, rand

B = [0.3, 0.0, 0.45, -0.2, 0.15]
E = [0.01, -0.02, 0.0, 0.03, -0.015]


def _eager(x, ks, h, b, e, rtol, atol, x_next=None):
    """The error norm as an eager PyTorch user writes it (torchdiffeq's), in float64."""
    x = x.double()
    if x_next is None:
        x_next = x + sum(h * c * k.double() for c, k in zip(b, ks))
    x_next = x_next.double()
    err = sum(h * c * k.double() for c, k in zip(e, ks))
    scale = torch.maximum(x.abs(), x_next.abs()) * rtol + atol
    r = torch.where(err == 0, 0.0, err / scale)
    return x_next, r.pow(2).flatten(1).mean(1)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
def test_rk_step_error_matches_reference_and_eager(device, dtype, layout, shape):
    x = rand(shape, dtype, device, layout)
    ks = [rand(shape, dtype, device, layout) for _ in B]
    out, sq = ops.rk_step_error(x, ks, 0.3, B, E, 1e-3, 1e-4)
    assert out.shape == shape and sq.shape == (shape[0],)
    assert sq.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    ref_out, ref_sq = ops.rk_step_error_reference(x, ks, 0.3, B, E, 1e-3, 1e-4)
    # the same sum in the same order; a contracted multiply-add rounds once less
    torch.testing.assert_close(out, ref_out, rtol=8 * EPS[dtype], atol=8 * EPS[dtype])
    # the reference sums in another order: the kernels' sums of squares agree to roundoff
    torch.testing.assert_close(sq, ref_sq, rtol=1e-5 if dtype != torch.float64 else 1e-12, atol=0)
    exact_out, exact_sq = _eager(x, ks, 0.3, B, E, 1e-3, 1e-4)
    eager = x + sum((0.3 * c) * k for c, k in zip(B, ks))
    check_error(out, exact_out, eager, dtype, len(B))
    # the error itself is computed in float; its norm is within a few roundoffs of the
    # float64 one (the new state enters the scale rounded to the state's dtype)
    torch.testing.assert_close(sq.double(), exact_sq, rtol=64 * EPS[dtype], atol=0)
    _, given = ops.rk_step_error(x, ks, 0.3, None, E, 1e-3, 1e-4, x_next=out)
    assert torch.equal(given, sq)


@pytest.mark.parametrize("device", devices())
def test_rk_step_error_non_finite_and_zero_operands(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g).to(device)
    ks = [torch.randn(4, 6, generator=g).to(device) for _ in B]
    ks[2][0, 1] = math.inf  # weight 0 in e and 0.45 in b: x_next infinite, the scale too
    ks[1][1, 2] = math.nan  # weight 0 in b, -0.02 in e: the error is NaN
    x[2, 3] = math.inf
    out, sq = ops.rk_step_error(x, ks, 0.5, B, E, 1e-2, 1e-3)
    ref_out, ref_sq = ops.rk_step_error_reference(x, ks, 0.5, B, E, 1e-2, 1e-3)
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    torch.testing.assert_close(sq, ref_sq, equal_nan=True)
    assert math.isnan(sq[1].item()) and math.isfinite(sq[0].item()) and math.isfinite(sq[2].item())
    # a term whose every coefficient is zero has no effect, even when not finite
    ks[4] = torch.full_like(x, math.nan)
    _, clean = ops.rk_step_error(
        x, ks, 0.5, [0.3, 0.0, 0.45, -0.2, 0.0], [0.01, -0.02, 0, 0.03, 0], 1e-2, 1e-3
    )
    assert math.isfinite(clean[3].item())
    # a zero state with atol 0: a zero error over a zero scale is zero, not NaN
    z = torch.zeros(3, 5, device=device)
    _, sq0 = ops.rk_step_error(z, [z, z], 0.5, [1.0, 0.0], [0.5, -0.5], 1e-3, 0.0)
    assert torch.equal(sq0, torch.zeros(3, device=device))
    # a sample of no elements has no error; a batch of no samples has no norm
    _, empty = ops.rk_step_error(torch.zeros(3, 0, device=device), [], 0.5, [], [], 1e-3, 1e-3)
    assert torch.equal(empty, torch.zeros(3, device=device))
    assert ops.rk_step_error(torch.zeros(0, 4, device=device), [], 0.5, [], [], 1e-3, 1e-3)[
        1
    ].shape == (0,)


@pytest.mark.parametrize("device", devices())
def test_a_samples_norm_is_the_same_alone_and_in_any_batch(device):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, 40, 41, generator=g).to(device)  # 4920 elements a sample
    ks = [torch.randn(x.shape, generator=g).to(device) for _ in B]
    _, sq = ops.rk_step_error(x, ks, 0.2, B, E, 1e-3, 1e-5)
    for i in (0, 3, 6):
        _, alone = ops.rk_step_error(
            x[i : i + 1], [k[i : i + 1] for k in ks], 0.2, B, E, 1e-3, 1e-5
        )
        assert torch.equal(alone[0], sq[i])
    # a sample larger than one chunk of the kernels is summed in chunk order, deterministically
    big = torch.randn(2, 70001, generator=g).to(device)
    kb = [torch.randn(big.shape, generator=g).to(device) for _ in B]
    first = ops.rk_step_error(big, kb, 0.2, B, E, 1e-3, 1e-5)[1]
    assert torch.equal(first, ops.rk_step_error(big, kb, 0.2, B, E, 1e-3, 1e-5)[1])
    assert torch.equal(
        ops.rk_step_error(big[1:], [k[1:] for k in kb], 0.2, B, E, 1e-3, 1e-5)[1][0], first[1]
    )


@pytest.mark.parametrize("device", devices())
def test_rk_step_error_gradcheck_and_opcheck(device):
    f64 = {"dtype": torch.float64, "device": device}
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, generator=g).to(**f64).requires_grad_()
    xn = torch.randn(3, 4, generator=g).to(**f64).requires_grad_()
    ks = [torch.randn(3, 4, generator=g).to(**f64).requires_grad_() for _ in range(3)]
    b, e = [0.5, -1.0, 0.25], [0.1, 0.2, -0.3]
    step = lambda x, *ks: ops.rk_step_error(x, ks, 0.7, b, e, 1e-2, 1e-3)  # noqa: E731
    norm = lambda x, xn, *ks: ops.rk_step_error(x, ks, 0.7, None, e, 1e-2, 1e-3, x_next=xn)[1]  # noqa: E731
    assert torch.autograd.gradcheck(step, (x, *ks))
    assert torch.autograd.gradgradcheck(step, (x, *ks))
    assert torch.autograd.gradcheck(norm, (x, xn, *ks))
    # the gradient is that of the reference's eager arithmetic
    (gx, *gk) = torch.autograd.grad(step(x, *ks)[1].sum() + step(x, *ks)[0].sum(), (x, *ks))
    ref = ops.rk_step_error_reference(x, ks, 0.7, b, e, 1e-2, 1e-3)
    torch.testing.assert_close(gx, torch.autograd.grad(ref[1].sum() + ref[0].sum(), x)[0])
    torch.library.opcheck(torch.ops.contnet.rk_step_error.default, (x, ks, 0.7, b, e, 1e-2, 1e-3))
    torch.library.opcheck(torch.ops.contnet.rk_error_norm.default, (x, xn, ks, 0.7, e, 1e-2, 1e-3))


def test_rk_step_error_compiles():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 8, generator=g)
    ks = [torch.randn(4, 8, generator=g) for _ in B]
    f = torch.compile(lambda x, ks: ops.rk_step_error(x, ks, 0.3, B, E, 1e-3, 1e-4), fullgraph=True)
    out, sq = f(x, ks)
    ref_out, ref_sq = ops.rk_step_error(x, ks, 0.3, B, E, 1e-3, 1e-4)
    assert torch.equal(out, ref_out) and torch.equal(sq, ref_sq)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x, ks: ops.rk_step_error(x[0, 0], [k[0, 0] for k in ks], 0.1, B, E, 1e-3, 0), ValueError,
         "x must have a batch dimension"),
        (lambda x, ks: ops.rk_step_error(x, ks, 0.1, B[:4], E, 1e-3, 0), ValueError, "terms and b"),
        (lambda x, ks: ops.rk_step_error(x, ks, 0.1, B, E[:4], 1e-3, 0), ValueError, "terms and e"),
        (lambda x, ks: ops.rk_step_error(x, ks * 2, 0.1, B * 2, E * 2, 1e-3, 0), ValueError, "at most 8"),
        (lambda x, ks: ops.rk_step_error(x, ks, 0.1, B, E, -1e-3, 0), ValueError, "rtol"),
        (lambda x, ks: ops.rk_step_error(x, ks, 0.1, B, E, 1e-3, math.inf), ValueError, "atol"),
        (lambda x, ks: ops.rk_step_error(x, ks, 0.1, None, E, 1e-3, 0, x_next=x[:1]), ValueError, "x_next"),
        (lambda x, ks: ops.rk_step_error(x, ks[:4] + [ks[4].double()], 0.1, B, E, 1e-3, 0), TypeError,
         r"terms\[4\]"),
    ],
)  # fmt: skip
def test_rk_step_error_names_the_wrong_argument(call, error, message):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, generator=g)
    ks = [torch.randn(2, 3, generator=g) for _ in B]
    with pytest.raises(error, match=message):
        call(x, ks)


def test_the_kernels_check_their_arguments_too():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="x must have a batch dimension"):
        torch.ops.contnet.rk_step_error(x[0, 0], [], 0.1, [], [], 1e-3, 0.0)
    with pytest.raises(ValueError, match="at most 8"):
        torch.ops.contnet.rk_error_norm(x, x, [x] * 9, 0.1, [0.1] * 9, 1e-3, 0.0)
    with pytest.raises(ValueError, match="rtol"):
        torch.ops.contnet.rk_error_norm(x, x, [x], 0.1, [0.1], -1.0, 0.0)
    with pytest.raises(ValueError, match="terms and b"):
        torch.ops.contnet.rk_step_error(x, [x], 0.1, [], [0.1], 1e-3, 0.0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rk_step_error_cuda_matches_cpu(dtype, layout):
    shape = (3, 17, 9, 33)
    x, *ks = [rand(shape, dtype, "cpu", layout) for _ in range(1 + len(B))]
    out, sq = ops.rk_step_error(x, ks, 0.3, B, E, 1e-3, 1e-4)
    cout, csq = ops.rk_step_error(x.cuda(), [k.cuda() for k in ks], 0.3, B, E, 1e-3, 1e-4)
    torch.testing.assert_close(cout.cpu(), out, rtol=4 * EPS[dtype], atol=8 * EPS[dtype])
    torch.testing.assert_close(
        csq.cpu(), sq, rtol=1e-5 if dtype != torch.float64 else 1e-12, atol=0
    )


def test_the_references_gradient_where_the_error_and_its_scale_vanish():
    """A zero error over a zero scale (a zero state with atol 0) is zero, and so is its
    gradient, in the reference (which torch.func runs) as in the kernels' backward."""
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for f in (ops.rk_step_error, ops.rk_step_error_reference):
        out, sq = f(x, [k], 0.5, [0.1], [0.05], 1e-3, 0.0)
        grads.append(torch.autograd.grad(out.sum() + sq.sum(), (x, k)))
    for got, want in zip(*grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want)


def test_odeint_and_the_op_name_what_they_take():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="x_next must have the shape"):
        ops.rk_step_error(x, [x], 0.1, None, [0.1], 1e-3, 0.0, x_next=x[:1])
    with pytest.raises(ValueError, match="h must be finite"):
        ops.rk_step_error(x, [x], math.nan, [0.1], [0.1], 1e-3, 0.0)
    import contnet

    with pytest.raises(TypeError, match="stats must be a dict"):
        contnet.odeint(lambda t, x: -x, x, scheme="dopri5", rtol=1e-3, stats=[])
