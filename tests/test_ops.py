import os

import pytest
import torch

import contnet
from contnet import ops

from .helpers import devices

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# error of a float computation relative to its float64 value, per dtype
EPS = {torch.float32: 1.2e-7, torch.float64: 2.3e-16, torch.float16: 9.8e-4, torch.bfloat16: 7.9e-3}


def test_backend_reports_the_extension():
    assert ops.extension_loaded(), ops.backend()
    assert ops.backend().startswith("extension (cpu")
    if os.environ.get("CONTNET_CUDA") == "1":
        # the CUDA kernels were compiled and registered, GPU or not
        assert ops.backend() == "extension (cpu, cuda)"
    with ops.use_reference():
        assert ops.backend() == "reference (forced)"


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        big = torch.randn(
            x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3] + 1, dtype=x.dtype, device=x.device
        )
        big[..., 1::2] = x
        return big[..., 1::2]
    return x


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("n_terms", [0, 1, 4, 11])
def test_rk_combine_matches_reference(device, dtype, layout, n_terms):
    shape = (2, 3, 5, 7)
    x = _layout(torch.randn(shape, device=device).to(dtype), layout)
    ks = [_layout(torch.randn(shape, device=device).to(dtype), layout) for _ in range(n_terms)]
    cs = torch.randn(n_terms).tolist()
    out = ops.rk_combine(x, ks, 0.3, cs)
    exact = ops.rk_combine_reference(x.double(), [k.double() for k in ks], 0.3, cs)
    eager = x
    for k, c in zip(ks, cs):
        eager = eager + (0.3 * c) * k
    assert out.dtype == dtype and out.shape == shape
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    err = (out.double() - exact).abs().max().item()
    eager_err = (eager.double() - exact).abs().max().item()
    scale = exact.abs().max().item() + 1.0
    assert err <= max(2 * eager_err, 4 * EPS[dtype] * scale), (err, eager_err)


def test_rk_combine_gradcheck_and_opcheck():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ks = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    cs = [0.5, -1.25, 2.0]
    f = lambda x, *ks: ops.rk_combine(x, ks, 0.7, cs)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, *ks))
    assert torch.autograd.gradgradcheck(f, (x, *ks))
    torch.library.opcheck(torch.ops.contnet.rk_combine.default, (x, ks, 0.7, cs))
    g = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.contnet.rk_combine_backward.default, (g, 0.7, cs))


def test_rk_combine_skips_zero_coefficients_and_empty():
    x = torch.randn(4)
    k = torch.randn(4)
    torch.testing.assert_close(ops.rk_combine(x, [k, k], 0.5, [0.0, 2.0]), x + k)
    e = torch.empty(0, 3)
    assert ops.rk_combine(e, [e], 0.1, [1.0]).shape == (0, 3)


def test_rk_combine_errors_name_the_argument():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"terms\[1\] must have the shape of x"):
        ops.rk_combine(x, [x, torch.randn(3, 4)], 1.0, [1.0, 1.0])
    with pytest.raises(TypeError, match=r"terms\[0\] must have the dtype of x"):
        ops.rk_combine(x, [x.double()], 1.0, [1.0])
    with pytest.raises(ValueError, match="terms and coeffs must have the same length"):
        ops.rk_combine(x, [x], 1.0, [1.0, 2.0])
    with pytest.raises(TypeError, match="x must be float32, float64"):
        ops.rk_combine(x.int(), [], 1.0, [])
    # the kernels check too, for callers of torch.ops directly
    with pytest.raises(RuntimeError, match=r"terms\[0\] must have the shape of x"):
        torch.ops.contnet.rk_combine(x, [torch.randn(2)], 1.0, [1.0])


def test_reference_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(ops, "_EXT_ERROR", ImportError("not built"))
    monkeypatch.setattr(ops, "_warned_missing", False)
    x = torch.randn(5)
    with pytest.warns(RuntimeWarning, match="not built"):
        out = ops.rk_combine(x, [x], 1.0, [1.0])
    torch.testing.assert_close(out, 2 * x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.rk_combine(x, [x], 1.0, [1.0])
    assert ops.backend().startswith("reference (contnet._C is not built")


@pytest.mark.cuda
def test_rk_combine_cuda_matches_cpu():
    x = torch.randn(1 << 20 | 1)
    ks = [torch.randn_like(x) for _ in range(5)]
    cs = torch.randn(5).tolist()
    cpu = ops.rk_combine(x, ks, 0.25, cs)
    gpu = ops.rk_combine(x.cuda(), [k.cuda() for k in ks], 0.25, cs)
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_odeint_uses_the_op_and_matches_the_reference_path():
    f = lambda t, x: torch.tanh(x) * (1 + t)  # noqa: E731
    x = torch.randn(3, 4, dtype=torch.float64)
    out = contnet.odeint(f, x, scheme="rk4", n_steps=3)
    with ops.use_reference():
        ref = contnet.odeint(f, x, scheme="rk4", n_steps=3)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
