"""Property-based tests of the fused ops: random shapes, dtypes, strides, empty tensors,
NaN/Inf operands, zero and underflowing coefficients, and faulty arguments.

A valid call agrees with the op's pure-PyTorch reference in the forward and in the
backward (the kernels' gradients against autograd through the reference), non-finite
values included; a faulty call raises ValueError or TypeError naming the argument. Every
tensor is drawn from a seed that hypothesis draws, so a failing case replays exactly.
Under ``make test`` the cases are the same on every run (derandomized profile); ``make
fuzz`` draws fresh ones."""

import re

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import contnet
from contnet import ops

from .helpers import count_case

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# relative tolerance of two computations of one result in a dtype (a few roundings apart)
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 4e-3, torch.bfloat16: 3e-2}
POISON = [float("nan"), float("inf"), -float("inf")]
ERRORS = (ValueError, TypeError)


class Maker:
    """Tensors of one case, drawn from a seed hypothesis chose: values ``randn``, some
    entries NaN or +-Inf, in a drawn layout."""

    def __init__(self, draw):
        self.draw = draw
        self.gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))

    def randn(self, shape, dtype):
        return torch.randn(shape, generator=self.gen, dtype=torch.float64).to(dtype)

    def tensor(self, shape, dtype, layout="contiguous", poison=True):
        t = self.randn(shape, dtype)
        if poison and t.numel() and self.draw(st.integers(0, 2)) == 0:
            n = self.draw(st.integers(1, 3))
            for _ in range(n):
                i = self.draw(st.integers(0, t.numel() - 1))
                t.view(-1)[i] = self.draw(st.sampled_from(POISON))
        return _layout(t, layout)


def _layout(t, layout):
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "sliced" and t.dim() >= 1:
        big = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    return t


LAYOUTS = ["contiguous", "transposed", "sliced", "channels_last"]


@st.composite
def shapes(draw, min_dims=1, max_dims=4):
    return tuple(draw(st.lists(st.integers(0, 5), min_size=min_dims, max_size=max_dims)))


def coefficients(n):
    """Coefficients as a stage update has them, and the edge cases: zero (skipped), one
    that underflows to zero in float32 once multiplied by h, and large ones."""
    value = st.one_of(
        st.floats(-3, 3, allow_nan=False),
        st.sampled_from([0.0, -0.0, 1e-46, 3e-39, 1e30]),
    )
    return st.lists(value, min_size=n, max_size=n)


def names_argument(err, names) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", str(err)) for n in names)


def assert_refused(err, fault, names):
    assert fault != "none", f"a valid call was refused: {err!r}"
    assert isinstance(err, ERRORS), f"{type(err).__name__} instead of ValueError/TypeError: {err}"
    assert names_argument(err, names), f"{err!r} names none of {names}"


def assert_agree(out, ref, dtype, scale=None):
    """Same dtype, shape, non-finite pattern and values within a few roundings, relative to
    the result or to ``scale`` (the magnitude of what was summed)."""
    if out is None or ref is None:
        assert out is None and ref is None or _all_zero(out) and _all_zero(ref), (out, ref)
        return
    assert out.dtype == ref.dtype == dtype and out.shape == ref.shape, (out, ref)
    a, b = out.double(), ref.double()
    assert torch.equal(a.isnan(), b.isnan()), ("NaN where the reference has none", a, b)
    finite = b.isfinite()
    assert torch.equal(a[~finite & ~b.isnan()], b[~finite & ~b.isnan()]), ("inf", a, b)
    rtol = RTOL[dtype]
    bound = rtol * (b.abs() if scale is None else scale.double()) + rtol
    bad = (a - b).abs() > bound
    assert not bad[finite].any(), (a[bad], b[bad])


def _all_zero(t):
    return t is None or bool((t == 0).all())


def _grads(outs, inputs, upstream):
    pairs = [(o, g) for o, g in zip(outs, upstream) if o.requires_grad]
    if not pairs or not any(t.requires_grad for t in inputs):
        return [None] * len(inputs)
    return torch.autograd.grad(
        [o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True
    )


def _leaves(ts):
    return [t.detach().requires_grad_() for t in ts]


# ----------------------------------------------------------------------------- rk_combine
@settings()
@given(data=st.data())
def test_rk_combine_any_input(data):
    count_case("ops.rk_combine")
    draw, mk = data.draw, Maker(data.draw)
    shape, dtype = draw(shapes()), draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 10))
    x = mk.tensor(shape, dtype, draw(st.sampled_from(LAYOUTS)))
    terms = [mk.tensor(shape, dtype, draw(st.sampled_from(LAYOUTS))) for _ in range(n)]
    coeffs = draw(coefficients(n))
    h = draw(st.sampled_from([0.3, 1.0, 1 / 64]))
    fault = draw(st.sampled_from(["none"] * 4 + ["shape", "dtype", "length", "int", "list", "h"]))
    if fault in ("shape", "dtype", "list") and not n:
        fault = "none"
    names = {
        "shape": ["terms[0]"],
        "dtype": [f"terms[{n - 1}]"],
        "length": ["coeffs"],
        "int": ["x"],
        "list": ["terms[0]"],
        "h": ["h"],
    }.get(fault)
    if fault == "shape":
        terms[0] = mk.tensor(shape + (2,), dtype)
    elif fault == "dtype":
        terms[-1] = terms[-1].to(torch.float64 if dtype != torch.float64 else torch.float32)
    elif fault == "length":
        coeffs = coeffs + [1.0]
    elif fault == "int":
        x = x.to(torch.int32)
    elif fault == "list":
        terms[0] = terms[0].tolist()
    elif fault == "h":
        h = "0.3"
    else:
        x, *terms = _leaves([x, *terms])
    try:
        out = ops.rk_combine(x, terms, h, coeffs)
    except Exception as e:  # noqa: BLE001 - the assertion says which kind it must be
        assert_refused(e, fault, names)
        return
    assert fault == "none", f"accepted {fault}"
    ref = ops.rk_combine_reference(x, terms, h, coeffs)
    magnitude = ops.rk_combine_reference(
        x.detach().abs(), [t.detach().abs() for t in terms], h, [abs(c) for c in coeffs]
    )
    assert_agree(out, ref, dtype, magnitude)
    g = mk.randn(shape, dtype)
    got, want = _grads([out], [x, *terms], [g]), _grads([ref], [x, *terms], [g])
    for a, b in zip(got, want, strict=True):
        assert_agree(a, b, dtype)


@settings()
@given(data=st.data())
def test_rk_combine_learned_any_input(data):
    count_case("ops.rk_combine_learned")
    draw, mk = data.draw, Maker(data.draw)
    shape, dtype = draw(shapes()), draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 8))
    x = mk.tensor(shape, dtype, draw(st.sampled_from(LAYOUTS)))
    terms = [mk.tensor(shape, dtype, draw(st.sampled_from(LAYOUTS))) for _ in range(n)]
    values = draw(coefficients(n))
    coeffs = torch.tensor(values, dtype=torch.float64).to(dtype)
    fault = draw(st.sampled_from(["none"] * 4 + ["coeffs_shape", "coeffs_dtype", "too_many"]))
    if fault == "coeffs_shape":
        coeffs = torch.zeros(n + 1, dtype=dtype)
    elif fault == "coeffs_dtype":
        coeffs = coeffs.to(torch.int64)
    elif fault == "too_many":
        terms = terms + [mk.tensor(shape, dtype)] * (9 - n)
        coeffs = torch.ones(9, dtype=dtype)
    else:
        x, *terms, coeffs = _leaves([x, *terms, coeffs])
    try:
        out = ops.rk_combine(x, terms, 0.5, coeffs)
    except Exception as e:  # noqa: BLE001
        assert_refused(e, fault, ["coeffs"] if fault != "too_many" else ["terms"])
        return
    assert fault == "none", f"accepted {fault}"
    ref = ops.rk_combine_reference(x, terms, 0.5, coeffs)
    magnitude = ops.rk_combine_reference(
        x.detach().abs(), [t.detach().abs() for t in terms], 0.5, coeffs.detach().abs()
    )
    assert_agree(out, ref, dtype, magnitude)
    g = mk.randn(shape, dtype)
    inputs = [x, *terms, coeffs]
    got, want = _grads([out], inputs, [g]), _grads([ref], inputs, [g])
    # a coefficient's gradient sums over every element: compared against the magnitudes
    summed = torch.tensor([(t.detach().double() * g.double()).abs().sum() * 0.5 for t in terms])
    for a, b, s in zip(got, want, [None] * (n + 1) + [summed], strict=True):
        assert_agree(a, b, dtype, s)


# ----------------------------------------------------------------------------- rk_epilogue
@settings()
@given(data=st.data())
def test_rk_epilogue_any_input(data):
    count_case("ops.rk_epilogue")
    draw, mk = data.draw, Maker(data.draw)
    shape, dtype = draw(shapes(min_dims=2)), draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    n_bases, n_terms = draw(st.integers(1, 3)), draw(st.integers(0, 4))
    y = mk.tensor(shape, dtype, layout)
    bias = mk.tensor((shape[1],), dtype) if draw(st.booleans()) else None
    bases = [mk.tensor(shape, dtype, draw(st.sampled_from(LAYOUTS))) for _ in range(n_bases)]
    terms = [mk.tensor(shape, dtype, layout) for _ in range(n_terms)]
    coeffs = draw(coefficients(n_bases * (n_terms + 1)))
    act = draw(st.sampled_from(list(ops.ACT_CODES)))
    return_k = draw(st.booleans())
    h, scale = draw(st.sampled_from([0.7, 1 / 16])), draw(st.sampled_from([1.0, -0.5, 3.0]))
    fault = draw(
        st.sampled_from(["none"] * 5 + ["bias", "coeffs", "act", "bases", "dims", "terms"])
    )
    names = {"dims": ["y"], "terms": ["terms"]}.get(fault, [fault])
    if fault == "bias":
        bias = mk.tensor((shape[1] + 1,), dtype)
    elif fault == "coeffs":
        coeffs = coeffs[:-1]
    elif fault == "act":
        act = "swish"
    elif fault == "bases":
        bases = []
    elif fault == "dims":
        y = y.reshape(-1)
    elif fault == "terms":
        terms = [mk.tensor(shape, dtype)] * 9
        coeffs = [1.0] * (n_bases * 10)
    else:
        y, *bases = _leaves([y, *bases])
        terms = _leaves(terms)
        bias = _leaves([bias])[0] if bias is not None else None
    try:
        outs = ops.rk_epilogue(y, bias, act, scale, bases, terms, h, coeffs, return_k=return_k)
    except Exception as e:  # noqa: BLE001
        assert_refused(e, fault, names)
        return
    assert fault == "none", f"accepted {fault}"
    code = ops.ACT_CODES[act]
    refs = ops.rk_epilogue_reference(y, bias, code, scale, bases, terms, h, coeffs, return_k)
    k = ops.rk_epilogue_reference(y, bias, code, scale, bases, terms, h, coeffs, True)[-1]
    # act is computed to a few roundings of |z| (gelu's 1 + erf(z) cancels for z < 0)
    z = y.detach().double() + (
        0 if bias is None else ops.checks.bias_view(bias.detach().double(), y)
    )
    k_mag = k.detach().double().abs() + abs(scale) * z.abs()
    mags = _magnitudes(bases, terms, k_mag, h, coeffs) + ([k_mag] if return_k else [])
    for out, ref, mag in zip(outs, refs, mags, strict=True):
        assert_agree(out, ref, dtype, mag)
    # gradients; their magnitudes: the same sums with |coefficients| and |gradients|, for
    # y's with |act'| + 1 (act' is computed to a few roundings of 1)
    upstream = [mk.randn(shape, dtype) for _ in outs]
    inputs = [y, *bases, *terms] + ([bias] if bias is not None else [])
    got, want = _grads(outs, inputs, upstream), _grads(refs, inputs, upstream)
    plus, ups = [abs(c) for c in coeffs], [u.abs() for u in upstream]
    mags = [
        _abs(m)
        for m in _grads(
            ops.rk_epilogue_reference(y, bias, code, scale, bases, terms, h, plus, return_k),
            inputs,
            ups,
        )
    ]
    linear = _grads(
        ops.rk_epilogue_reference(y, bias, 0, scale, bases, terms, h, plus, return_k), inputs, ups
    )
    if mags[0] is not None:
        mags[0] = mags[0] + _abs(linear[0])
        if bias is not None:
            mags[-1] = mags[0].sum([d for d in range(len(shape)) if d != 1])
    for a, b, m in zip(got, want, mags, strict=True):
        assert_agree(a, b, dtype, m)


def _abs(t):
    return None if t is None else t.detach().double().abs()


def _magnitudes(bases, terms, k_mag, h, coeffs):
    """|base| + sum_j |h c_j| |term_j| + |h c_k| k_mag per output: the size of what each
    output sums, against which its rounding is measured."""
    T = len(terms)
    out = []
    for o, base in enumerate(bases):
        row = coeffs[o * (T + 1) : (o + 1) * (T + 1)]
        m = base.detach().double().abs()
        for c, t in zip(row, [*terms, k_mag]):
            m = m + abs(h * c) * t.detach().double().abs()
        out.append(m)
    return out


# ----------------------------------------------------------------------------- basis_interp
@settings()
@given(data=st.data())
def test_basis_interp_any_input(data):
    count_case("ops.basis_interp")
    draw, mk = data.draw, Maker(data.draw)
    family = draw(st.sampled_from(contnet.basis.names()))
    K = draw(st.integers(1, 6)) * 2
    times = draw(st.lists(st.floats(-0.5, 1.5), min_size=0, max_size=6))
    phi = contnet.basis.get(family, K)(times)
    dtype = draw(st.sampled_from(DTYPES))
    thetas = [
        mk.tensor(
            (K,) + draw(shapes(min_dims=0, max_dims=3)), dtype, draw(st.sampled_from(LAYOUTS))
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    fault = draw(st.sampled_from(["none"] * 4 + ["nodes", "phi_dtype", "empty", "grad_phi"]))
    names = {"nodes": ["thetas[0]"], "empty": ["thetas"]}.get(fault, ["phi"])
    if fault == "nodes":
        thetas[0] = mk.tensor((K + 1, 2), dtype)
    elif fault == "phi_dtype":
        phi = phi.float()
    elif fault == "empty":
        thetas = []
    elif fault == "grad_phi":
        phi = phi.requires_grad_()
    else:
        thetas = _leaves(thetas)
    try:
        outs = ops.basis_interp(phi, thetas)
    except Exception as e:  # noqa: BLE001
        assert_refused(e, fault, names)
        return
    assert fault == "none", f"accepted {fault}"
    refs = ops.basis_interp_reference(phi, thetas)
    S = len(times)
    for out, ref, t in zip(outs, refs, thetas, strict=True):
        mag = phi.abs() @ t.detach().double().abs().reshape(K, t[0].numel())
        assert_agree(out, ref, dtype, mag.reshape((S,) + t.shape[1:]))
    upstream = [mk.randn(o.shape, dtype) for o in outs]
    got, want = _grads(outs, thetas, upstream), _grads(refs, thetas, upstream)
    for a, b, g, t in zip(got, want, upstream, thetas, strict=True):
        mag = phi.abs().T @ g.double().abs().reshape(S, t[0].numel())
        assert_agree(a, b, dtype, mag.reshape(t.shape))
