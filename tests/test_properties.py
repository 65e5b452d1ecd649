"""Property-based bad input over the ops and the public API: random shapes, dtypes,
strides, empty tensors, NaN/Inf and mismatched arguments. Every case either matches the
reference or raises ValueError/TypeError/RuntimeError naming the offending argument --
never a crash. The number of cases run is printed in the test summary."""

import collections
import re

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contnet
from contnet import ops

CASES = collections.Counter()
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ERRORS = (ValueError, TypeError, RuntimeError)


def _tensor(draw, shape, dtype, layout):
    t = torch.randn(shape).to(dtype)
    poison = draw(st.sampled_from(["none", "none", "nan", "inf"]))
    if poison != "none" and t.numel():
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = float(poison)
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "sliced" and t.dim() >= 1:
        big = torch.randn(shape[:-1] + (2 * shape[-1],)).to(dtype)
        big[..., ::2] = t
        t = big[..., ::2]
    return t


@st.composite
def shapes(draw, min_dims=1):
    return tuple(draw(st.lists(st.integers(0, 5), min_size=min_dims, max_size=4)))


def _names_argument(err, names):
    return any(re.search(rf"\b{re.escape(n)}\b", str(err)) for n in names)


def _close(out, ref):
    torch.testing.assert_close(out.double(), ref.double(), rtol=2e-2, atol=2e-2, equal_nan=True)


@SETTINGS
@given(data=st.data())
def test_rk_combine_any_input(data):
    CASES["rk_combine"] += 1
    draw = data.draw
    shape, dtype = draw(shapes()), draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    n = draw(st.integers(0, 4))
    x = _tensor(draw, shape, dtype, layout)
    terms = [
        _tensor(draw, shape, dtype, draw(st.sampled_from(["contiguous", "sliced"])))
        for _ in range(n)
    ]
    coeffs = draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n))
    fault = draw(st.sampled_from(["none", "none", "shape", "dtype", "length", "int", "not_tensor"]))
    if fault == "shape" and n:
        terms[0] = torch.randn(shape + (2,)).to(dtype)
    elif fault == "dtype" and n:
        terms[-1] = terms[-1].to(torch.float64 if dtype != torch.float64 else torch.float32)
    elif fault == "length":
        coeffs = coeffs + [1.0]
    elif fault == "int":
        x = x.to(torch.int32)
    elif fault == "not_tensor" and n:
        terms[0] = terms[0].tolist()
    try:
        out = ops.rk_combine(x, terms, 0.3, coeffs)
    except ERRORS as e:
        assert fault != "none", e
        assert _names_argument(e, ["x", "terms", "coeffs", "terms[0]", f"terms[{n - 1}]"]), e
        return
    # The reference at the input's dtype rounds h * c as the kernels do (a tiny coefficient
    # underflows to 0 in float32, and 0 * inf is NaN there but not in float64).
    _close(out, ops.rk_combine_reference(x, terms, 0.3, coeffs))


@SETTINGS
@given(data=st.data())
def test_rk_epilogue_any_input(data):
    CASES["rk_epilogue"] += 1
    draw = data.draw
    shape, dtype = draw(shapes(min_dims=2)), draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    n_bases, n_terms = draw(st.integers(1, 3)), draw(st.integers(0, 3))
    y = _tensor(draw, shape, dtype, layout)
    bias = torch.randn(shape[1]).to(dtype) if draw(st.booleans()) else None
    bases = [_tensor(draw, shape, dtype, "contiguous") for _ in range(n_bases)]
    terms = [_tensor(draw, shape, dtype, layout) for _ in range(n_terms)]
    coeffs = draw(
        st.lists(
            st.floats(-2, 2), min_size=n_bases * (n_terms + 1), max_size=n_bases * (n_terms + 1)
        )
    )
    act = draw(st.sampled_from(list(ops.ACT_CODES)))
    fault = draw(st.sampled_from(["none", "none", "bias", "coeffs", "act", "bases", "dims"]))
    if fault == "bias":
        bias = torch.randn(shape[1] + 1).to(dtype)
    elif fault == "coeffs":
        coeffs = coeffs[:-1]
    elif fault == "act":
        act = "swish"
    elif fault == "bases":
        bases = []
    elif fault == "dims":
        y = y.reshape(-1)
    try:
        outs = ops.rk_epilogue(y, bias, act, 0.7, bases, terms, 0.2, coeffs, return_k=True)
    except ERRORS as e:
        assert fault != "none", e
        assert _names_argument(e, ["y", "bias", "act", "bases", "terms", "coeffs"]), e
        return
    refs = ops.rk_epilogue_reference(
        y, bias, ops.ACT_CODES[act], 0.7, bases, terms, 0.2, coeffs, True
    )
    for out, ref in zip(outs, refs):
        _close(out, ref)


@SETTINGS
@given(data=st.data())
def test_basis_interp_any_input(data):
    CASES["basis_interp"] += 1
    draw = data.draw
    family = draw(st.sampled_from(contnet.basis.names()))
    K = draw(st.integers(2, 6)) * (2 if family == "piecewise_linear" else 1)
    phi = contnet.basis.get(family, K)(draw(st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=6)))
    dtype = draw(st.sampled_from(DTYPES))
    thetas = [
        _tensor(draw, (K,) + draw(shapes(min_dims=0)), dtype, "contiguous")
        for _ in range(draw(st.integers(1, 3)))
    ]
    fault = draw(st.sampled_from(["none", "none", "nodes", "phi_dtype", "empty"]))
    if fault == "nodes":
        thetas[0] = torch.randn(K + 1, 2).to(dtype)
    elif fault == "phi_dtype":
        phi = phi.float()
    elif fault == "empty":
        thetas = []
    try:
        outs = ops.basis_interp(phi, thetas)
    except ERRORS as e:
        assert fault != "none", e
        assert _names_argument(e, ["phi", "thetas", "thetas[0]"]), e
        return
    for out, ref in zip(outs, ops.basis_interp_reference(phi, thetas)):
        _close(out, ref)


@SETTINGS
@given(data=st.data())
def test_public_api_any_input(data):
    """Constructors and calls with random arguments, good or bad."""
    CASES["public API"] += 1
    draw = data.draw
    kind = draw(st.sampled_from(["odeint", "unit", "block", "conv", "basis", "scheme", "net"]))
    ints = st.one_of(st.integers(-2, 6), st.sampled_from([2.5, "3", None]))
    try:
        if kind == "odeint":
            x = _tensor(draw, draw(shapes()), draw(st.sampled_from(DTYPES)), "contiguous")
            contnet.odeint(
                lambda t, x: -x,
                x,
                scheme=draw(st.sampled_from([*contnet.schemes.names()[:9], "rk5", 3])),
                n_steps=draw(ints),
                t0=draw(st.sampled_from([0.0, 1.0, "0"])),
                backprop=draw(st.sampled_from(["direct", "checkpoint", "adjoint", "magic"])),
            )
        elif kind == "unit":
            unit = contnet.ConvUnit(
                draw(ints),
                n_basis=draw(ints),
                basis=draw(st.sampled_from([*contnet.basis.names(), "spline"])),
                act=draw(st.sampled_from(["relu", "tanh", "swish"])),
                norm=draw(st.sampled_from([None, "batch", "layer"])),
            )
            unit(0.5, torch.randn(1, draw(st.integers(1, 4)), 3, 3))
        elif kind == "block":
            unit = contnet.ConvUnit(3, n_basis=2)
            block = contnet.ContinuousBlock(
                unit, scheme=draw(st.sampled_from(["rk4", "lm", "xx"])), n_steps=draw(ints)
            )
            block.backprop = draw(st.sampled_from(["direct", "adjoint", "nope"]))
            block(torch.randn(draw(st.integers(0, 2)), draw(st.integers(2, 4)), 3, 3))
        elif kind == "conv":
            conv = contnet.TimeConv2d(draw(ints), draw(ints), draw(ints), n_basis=draw(ints))
            conv(draw(st.sampled_from([0.3, "t", torch.tensor(0.3)])), torch.randn(1, 2, 5, 5))
        elif kind == "basis":
            contnet.basis.get(
                draw(st.sampled_from([*contnet.basis.names(), "cubic", 1])), draw(ints)
            )
        elif kind == "scheme":
            contnet.schemes.stage_times(
                draw(st.sampled_from([*contnet.schemes.names(), "rk9"])), draw(ints)
            )
        else:
            net = contnet.ContinuousNet(
                in_channels=draw(ints), widths=draw(st.sampled_from([(4, 8), (), (0,)]))
            )
            net(torch.randn(1, draw(st.integers(1, 3)), 8, 8))
    except ERRORS as e:
        assert re.search(r"\w+", str(e)), "an error must say what is wrong"
        assert not isinstance(e, RuntimeError) or "must" in str(e) or "expected" in str(e), e
