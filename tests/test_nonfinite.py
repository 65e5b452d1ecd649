"""The fused ops, their pure-PyTorch references and eager PyTorch agree on every input,
non-finite included: a table of special values (+-inf, NaN, +-0, large, the softplus
threshold) through every activation and dtype, forward and backward, and the cases that
fuzzing (``make fuzz``) found, pinned.

"Eager PyTorch" is the same arithmetic written with ``torch.nn.functional``'s activations
in float64, zero coefficients skipped (as the ops document), rounded to the dtype."""

import pytest
import torch
import torch.nn.functional as F

from contnet import ops

from .helpers import devices

INF, NAN = float("inf"), float("nan")
SPECIAL = [INF, -INF, NAN, 0.0, -0.0, 1e4, -1e4, 20.5, -20.5, 19.5, 100.0, -100.0, 1.0, -3.0, 0.3]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
EAGER = {
    "identity": lambda z: z,
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
}


def assert_same(a, b, dtype, magnitude=None):
    """Equal non-finite patterns (NaN, the sign of inf); finite values within a few
    roundings of ``magnitude`` (default: of ``b``)."""
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    a, b = a.double(), b.double()
    assert torch.equal(a.isnan(), b.isnan()), (a, b)
    inf = b.isinf()
    assert torch.equal(a[inf], b[inf]) and torch.equal(a.isinf(), inf), (a, b)
    m = b.abs() if magnitude is None else magnitude.double().nan_to_num(INF)
    close = (a - b).abs() <= RTOL[dtype] * (m + 1)
    assert close[b.isfinite()].all(), (a[~close], b[~close])


def _special(dtype, device, channels=3):
    """(1, channels, len(SPECIAL)) of the special values, finite ones within the dtype."""
    v = torch.tensor(SPECIAL, dtype=torch.float64, device=device)
    return v.repeat(channels).reshape(1, channels, -1).to(dtype)


def _eager_epilogue(dtype):
    """The epilogue in eager float64 with zero coefficients skipped, rounded to ``dtype``."""
    return lambda *args: _eager(dtype, *args)


def _eager(dtype, y, bias, act, scale, bases, terms, h, coeffs, return_k):
    z = y.double() + (0 if bias is None else bias.double().view(1, -1, 1))
    k = scale * EAGER[act](z)
    n = len(terms)
    outs = []
    for o, base in enumerate(bases):
        out = base.double()
        for c, t in zip(coeffs[o * (n + 1) : (o + 1) * (n + 1)], [*terms, k]):
            if h * c != 0:
                out = out + (h * c) * t.double()
        outs.append(out.to(dtype))
    return outs + ([k.to(dtype)] if return_k else [])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", list(ops.ACT_CODES))
def test_epilogue_kernel_reference_and_eager_agree_on_special_values(act, dtype, device):
    """Forward (outputs and k) and backward (y, bias, bases, terms) on the special values,
    a bias with an inf, a term with an inf and a zero coefficient, a zero coefficient of k."""
    y = _special(dtype, device)
    bias = torch.tensor([0.0, 0.5, INF], device=device).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    bases = [torch.randn(y.shape, generator=gen, device=device).to(dtype) for _ in range(3)]
    terms = [torch.randn(y.shape, generator=gen, device=device).to(dtype) for _ in range(2)]
    terms[1][0, 0, 0] = INF
    # out0 = b0 + .5 t0 + k, out1 = b1 + .25 t1 + 2 k, out2 = b2 + t0 (k's coefficient 0)
    coeffs = [0.5, 0.0, 1.0, 0.0, 0.25, 2.0, 1.0, 0.0, 0.0]
    args = (act, 0.9, None, None, 0.7, coeffs, True)

    def run(fn, leaves):
        yy, bb, *rest = leaves
        outs = fn(yy, bb, args[0], args[1], rest[:3], rest[3:], args[4], args[5], args[6])
        up = [torch.linspace(-2, 2, y.numel(), device=device).reshape(y.shape).to(dtype)] * len(
            outs
        )
        return outs, torch.autograd.grad(outs, leaves, up, allow_unused=True)

    def leaves():
        return [t.detach().clone().requires_grad_() for t in [y, bias, *bases, *terms]]

    kernel = run(ops.rk_epilogue, leaves())
    reference = run(
        lambda y, b, a, *r: ops.rk_epilogue_reference(y, b, ops.ACT_CODES[a], *r), leaves()
    )
    eager = run(_eager_epilogue(dtype), [t.double() for t in leaves()])
    # magnitudes of what each result sums (act is computed to a few roundings of |z|)
    z = (y.double() + bias.double().view(1, -1, 1)).abs()
    k_mag = eager[0][-1].double().abs() + z
    for i, (k_out, r_out, e_out) in enumerate(zip(kernel[0], reference[0], eager[0])):
        mag = k_mag
        if i < 3:
            row = coeffs[3 * i : 3 * i + 3]
            mag = bases[i].double().abs() + sum(
                abs(0.7 * c) * t.double().abs() for c, t in zip(row, [*terms, k_mag]) if c
            )
        assert_same(k_out, r_out, dtype, mag)
        assert_same(k_out, e_out, dtype, mag)
    # gradients: upstream values within [-2, 2], at most 4 outputs, |scale| < 1, and the
    # bias's sums over 15 elements
    for k_grad, r_grad, e_grad in zip(kernel[1], reference[1], eager[1]):
        e_grad = e_grad.to(dtype)
        mag = e_grad.double().abs().nan_to_num(0, 0, 0) + (8 if e_grad.dim() > 1 else 120)
        assert_same(k_grad, r_grad, dtype, mag)
        assert_same(k_grad, e_grad, dtype, mag)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_combine_and_interp_kernel_reference_and_eager_agree_on_special_values(dtype, device):
    x = _special(dtype, device)
    k = x.flip(-1)
    # a zero coefficient skips its term (inf and NaN in it have no effect), tiny ones too
    out = ops.rk_combine(x, [k, k, k], 0.5, [2.0, 0.0, 1e-46])
    ref = ops.rk_combine_reference(x, [k, k, k], 0.5, [2.0, 0.0, 1e-46])
    eager = (x.double() + 1.0 * k.double()).to(dtype)
    assert_same(out, ref, dtype, x.double().abs() + k.double().abs())
    assert_same(out, eager, dtype, x.double().abs() + k.double().abs())
    # the weight lookup: phi zero where a node's basis function vanishes
    theta = torch.stack([x.flatten(), k.flatten()])
    phi = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64, device=device)
    (w,), (w_ref,) = ops.basis_interp(phi, [theta]), ops.basis_interp_reference(phi, [theta])
    t64 = theta.double()
    eager = torch.stack([t64[0], 0.25 * t64[0] + 0.75 * t64[1], t64[1]]).to(dtype)
    assert_same(w, w_ref, dtype, t64.abs().sum(0).expand(3, -1))
    assert_same(w, eager, dtype, t64.abs().sum(0).expand(3, -1))


# ----------------------------------------------------------------------------- pinned cases
# Each found by property-based testing; the ids say what went wrong before the fix.


def test_pinned_gelu_of_inf_is_inf_in_the_reference():
    # F.gelu's vectorised float32 CPU loop returns NaN at +inf; the kernel and float64
    # give inf. The reference computes the exact form itself.
    y = torch.full((1, 2, 8), INF)
    for fn in (ops.rk_epilogue, ops.rk_epilogue_reference):
        act = "gelu" if fn is ops.rk_epilogue else ops.ACT_CODES["gelu"]
        (out,) = fn(y, None, act, 0.7, [torch.zeros_like(y)], [], 0.2, [1.0])
        assert torch.equal(out, torch.full_like(y, INF)), fn


@pytest.mark.parametrize("fn", [ops.rk_epilogue, ops.rk_epilogue_reference])
def test_pinned_zero_coefficient_of_k_skips_it(fn):
    # k = inf with coefficient 0 left the output NaN (0 * inf) in the kernel and reference,
    # where rk_combine, and the unfused steps, skip a zero coefficient
    y = torch.tensor([[INF, -INF, NAN, 1.0]]).T.reshape(1, 1, 4)
    base = torch.arange(4.0).reshape(1, 1, 4)
    act = "relu" if fn is ops.rk_epilogue else ops.ACT_CODES["relu"]
    (out,) = fn(y, None, act, 1.0, [base], [], 0.5, [0.0])
    assert torch.equal(out, base)


def test_pinned_half_bias_gradient_sums_before_rounding():
    # float16, identity, h * c = 1e5: y's gradients overflow to +-inf in float16;
    # the bias's gradient summed those (NaN) where autograd sums the float values
    y = torch.zeros(2, 1, dtype=torch.float16, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float16, requires_grad=True)
    base = torch.zeros(2, 1, dtype=torch.float16, requires_grad=True)
    g = torch.tensor([[1.0], [-1.0 + 2**-10]], dtype=torch.float16)
    for fn, act in ((ops.rk_epilogue, "identity"), (ops.rk_epilogue_reference, 0)):
        (out,) = fn(y, bias, act, 1.0, [base], [], 0.5, [2e5])
        grad_y, grad_b = torch.autograd.grad(out, [y, bias], g)
        assert torch.equal(grad_y, torch.tensor([[INF], [-INF]], dtype=torch.float16)), fn
        assert grad_b.item() == pytest.approx(2**-10 * 1e5, rel=1e-3), fn


def test_pinned_half_term_gradient_is_rounded_once():
    # float16: a term read by two outputs with coefficient 1e30; its gradient is one float
    # sum rounded once (-inf), where the reference rounded each output's share (inf - inf)
    t = torch.zeros(1, 1, dtype=torch.float16, requires_grad=True)
    y, bases = torch.zeros(1, 1, dtype=torch.float16), [torch.zeros(1, 1, dtype=torch.float16)] * 2
    g = [torch.tensor([[1.0]], dtype=torch.float16), torch.tensor([[-1.5]], dtype=torch.float16)]
    for fn, act in ((ops.rk_epilogue, "identity"), (ops.rk_epilogue_reference, 0)):
        outs = fn(y, None, act, 1.0, bases, [t], 0.7, [1e30, 0.0, 1e30, 0.0])
        (grad,) = torch.autograd.grad(outs, [t], g)
        assert torch.equal(grad, torch.tensor([[-INF]], dtype=torch.float16)), fn


@pytest.mark.parametrize("return_k", [False, True])
def test_pinned_no_gradient_through_k_when_nothing_reads_it(return_k):
    # gelu at +-inf and NaN has a NaN derivative: with every coefficient of k zero (and k
    # not returned) y is on no path to the loss, and gets no gradient, not 0 * NaN
    y = torch.tensor([INF, -INF, NAN, 1.0]).reshape(1, 1, 4).requires_grad_()
    base = torch.ones(1, 1, 4, requires_grad=True)
    for fn, act in ((ops.rk_epilogue, "gelu"), (ops.rk_epilogue_reference, 3)):
        outs = fn(y, None, act, 1.0, [base], [], 0.5, [0.0], return_k)
        grads = torch.autograd.grad(outs[0].sum(), [y, base], allow_unused=True)
        assert grads[0] is None and torch.equal(grads[1], torch.ones_like(base)), fn
