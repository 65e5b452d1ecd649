"""Property-based tests of the error-estimate op ``rk_step_error``, as
:mod:`tests.test_properties_ops` tests the other fused ops: random shapes, dtypes, strides,
empty tensors, NaN/Inf operands, zero and underflowing coefficients, both forms (the new
state computed or given), and faulty arguments named in the error."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contnet import ops

from .helpers import count_case
from .test_properties_ops import (
    DTYPES,
    LAYOUTS,
    Maker,
    _grads,
    _leaves,
    assert_agree,
    assert_refused,
    coefficients,
    shapes,
)


def _sq_agree(out, ref):
    """Per-sample means of squares, summed in another order than the reference's."""
    assert out.dtype == ref.dtype and out.shape == ref.shape, (out, ref)
    a, b = out.double(), ref.double()
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf()), (a, b)
    finite = b.isfinite()
    tol = 1e-4 if ref.dtype == torch.float32 else 1e-10
    assert ((a - b).abs()[finite] <= tol * b.abs()[finite] + 1e-30).all(), (a, b)


@settings()
@given(data=st.data())
def test_rk_step_error_any_input(data):
    count_case("ops.rk_step_error")
    draw, mk = data.draw, Maker(data.draw)
    shape, dtype = draw(shapes(min_dims=1)), draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 8))
    x = mk.tensor(shape, dtype, draw(st.sampled_from(LAYOUTS)))
    terms = [mk.tensor(shape, dtype, draw(st.sampled_from(LAYOUTS))) for _ in range(n)]
    small = st.one_of(st.floats(-3, 3, allow_nan=False), st.sampled_from([0.0, 1e-46]))
    b, e = draw(coefficients(n)), draw(st.lists(small, min_size=n, max_size=n))
    h = draw(st.sampled_from([0.3, 1.0, 1 / 64]))
    rtol, atol = draw(st.sampled_from([0.0, 1e-3, 1.0])), draw(st.sampled_from([0.0, 1e-6, 1.0]))
    given_next = draw(st.booleans())
    x_next = mk.tensor(shape, dtype) if given_next else None
    fault = draw(
        st.sampled_from(["none"] * 4 + ["shape", "dtype", "length", "rtol", "0-d", "many"])
    )
    if fault in ("shape", "dtype") and not n:
        fault = "none"
    names = {"shape": ["terms[0]"], "dtype": [f"terms[{n - 1}]"], "length": ["e"],
             "rtol": ["rtol"], "0-d": ["x"], "many": ["terms"]}.get(fault)  # fmt: skip
    if fault == "shape":
        terms[0] = mk.tensor(shape + (2,), dtype)
    elif fault == "dtype":
        terms[-1] = terms[-1].to(torch.float64 if dtype != torch.float64 else torch.float32)
    elif fault == "length":
        e = e + [1.0]
    elif fault == "rtol":
        rtol = -1e-3
    elif fault == "0-d":
        x, terms, x_next, given_next = x.sum(), [t.sum() for t in terms], None, False
    elif fault == "many":
        terms, b, e = terms + [x] * (9 - n), b + [1.0] * (9 - n), e + [1.0] * (9 - n)
    finite = all(bool(t.isfinite().all()) for t in [x, *terms] + ([x_next] if given_next else []))
    if fault == "none" and finite and dtype in (torch.float32, torch.float64):
        x, *terms = _leaves([x, *terms])
    try:
        out, sq = ops.rk_step_error(x, terms, h, None if given_next else b, e, rtol, atol, x_next)
    except Exception as err:  # noqa: BLE001 - the assertion says which kind it must be
        assert_refused(err, fault, names)
        return
    assert fault == "none", f"accepted {fault}"
    ref, ref_sq = ops.rk_step_error_reference(x, terms, h, b, e, rtol, atol, x_next)
    if not given_next:
        magnitude = ops.rk_combine_reference(
            x.detach().abs(), [t.detach().abs() for t in terms], h, [abs(c) for c in b]
        )
        assert_agree(out, ref, dtype, magnitude)
    _sq_agree(sq, ref_sq)
    if x.requires_grad and bool(ref_sq.isfinite().all()):
        g = mk.randn(sq.shape, sq.dtype)
        got, want = _grads([sq], [x, *terms], [g]), _grads([ref_sq], [x, *terms], [g])
        for a, w in zip(got, want, strict=True):
            if w is not None and bool(w.isfinite().all()):
                torch.testing.assert_close(
                    a, w, rtol=1e-3 if dtype == torch.float32 else 1e-9, atol=1e-6
                )
