"""rk_combine and its learned-coefficient form against their reference: dtypes x layouts x
sizes, any number of terms, half sums in float, operands larger than the cache, zero and
vanishing coefficients, opcheck and float64 gradcheck, CPU/CUDA parity."""

import pytest
import torch

from contnet import ops

from .helpers import devices
from .op_cases import DTYPES, EPS, LAYOUTS, SHAPES, check_error, layout_of, rand


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
def test_rk_combine_matches_reference(device, dtype, layout, shape):
    n_terms = 5
    x = rand(shape, dtype, device, layout)
    ks = [rand(shape, dtype, device, layout) for _ in range(n_terms)]
    cs = torch.randn(n_terms).tolist()
    out = ops.rk_combine(x, ks, 0.3, cs)
    assert out.shape == shape
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    exact = ops.rk_combine_reference(x.double(), [k.double() for k in ks], 0.3, cs)
    eager = x
    for k, c in zip(ks, cs):
        eager = eager + (0.3 * c) * k
    check_error(out, exact, eager, dtype, n_terms)


@pytest.mark.parametrize("n_terms", [0, 1, 8, 11])
def test_rk_combine_any_number_of_terms(n_terms):
    x = torch.randn(7, 5, dtype=torch.float64)
    ks = [torch.randn(7, 5, dtype=torch.float64) for _ in range(n_terms)]
    cs = torch.randn(n_terms).tolist()
    torch.testing.assert_close(
        ops.rk_combine(x, ks, 0.5, cs), ops.rk_combine_reference(x, ks, 0.5, cs)
    )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_rk_combine_half_sums_longer_than_one_pass_stay_in_float(device, dtype, layout):
    # 12 terms take two passes of the kernel; the running sum must stay in float between
    # them. x in [1, 2) (one ulp u there); the first 8 terms add u / 2, the last 4 another
    # u / 2: x + u exactly, where a sum rounded to the storage type after the first pass
    # loses both halves for every x with an even last bit
    u = torch.finfo(dtype).eps
    x = layout_of((1 + torch.rand(2, 3, 8, 9, device=device)).to(dtype), layout)
    ks = [torch.full_like(x, u / 16)] * 8 + [torch.full_like(x, u / 8)] * 4
    out = torch.ops.contnet.rk_combine(x, ks, 1.0, [1.0] * 12)
    assert out.dtype == dtype and out.stride() == x.stride()
    torch.testing.assert_close(out, x + u, rtol=0, atol=0)
    torch.testing.assert_close(
        out, ops.rk_combine_reference(x, ks, 1.0, [1.0] * 12), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_terms", [6, 11])
def test_rk_combine_larger_than_cache(dtype, n_terms):
    # Over 64 MiB of operands: where that exceeds the last-level cache, the CPU kernel
    # streams its output past it (aligned blocks, unaligned heads where the threads' ranges
    # begin, odd tails; 11 terms take a second pass that reads the output back).
    numel = (1 << 22) + 3
    x = torch.randn(numel).to(dtype)
    ks = [torch.randn(numel).to(dtype) for _ in range(n_terms)]
    cs = torch.randn(n_terms).tolist()
    out = ops.rk_combine(x, ks, 0.3, cs)
    exact = ops.rk_combine_reference(x.double(), [k.double() for k in ks], 0.3, cs)
    eager = x
    for k, c in zip(ks, cs):
        eager = eager + (0.3 * c) * k
    check_error(out, exact, eager, dtype, n_terms)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
def test_rk_combine_learned_matches_reference(device, dtype, layout, shape):
    x = rand(shape, dtype, device, layout)
    ks = [rand(shape, dtype, device, layout) for _ in range(3)]
    c = torch.randn(3, device=device, dtype=dtype, requires_grad=True)
    out = ops.rk_combine(x, ks, 0.7, c)
    exact = ops.rk_combine_reference(x.double(), [k.double() for k in ks], 0.7, c.detach().double())
    eager = x + sum((0.7 * c[j].detach()) * ks[j] for j in range(3))
    check_error(out, exact, eager, dtype, 3)
    g = rand(shape, dtype, device, layout)
    (gc,) = torch.autograd.grad(out, c, g)
    exact_gc = torch.stack([0.7 * (k.double() * g.double()).sum() for k in ks])
    tol = 8 * EPS[dtype] * (1 + sum((k.double().abs() * g.double().abs()).sum() for k in ks).item())
    assert (gc.double() - exact_gc).abs().max().item() <= tol


@pytest.mark.parametrize("device", devices())
def test_rk_combine_gradcheck_and_opcheck(device):
    f64 = {"dtype": torch.float64, "device": device}
    x = torch.randn(3, 4, **f64, requires_grad=True)
    ks = [torch.randn(3, 4, **f64, requires_grad=True) for _ in range(3)]
    cs = [0.5, -1.25, 2.0]
    f = lambda x, *ks: ops.rk_combine(x, ks, 0.7, cs)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, *ks))
    assert torch.autograd.gradgradcheck(f, (x, *ks))
    torch.library.opcheck(torch.ops.contnet.rk_combine.default, (x, ks, 0.7, cs))
    g = torch.randn(3, 4, **f64, requires_grad=True)
    torch.library.opcheck(torch.ops.contnet.rk_combine_backward.default, (g, 0.7, cs))


@pytest.mark.parametrize("device", devices())
def test_rk_combine_learned_gradcheck_and_opcheck(device):
    f64 = {"dtype": torch.float64, "device": device}
    x = torch.randn(3, 4, **f64, requires_grad=True)
    ks = [torch.randn(3, 4, **f64, requires_grad=True) for _ in range(3)]
    c = torch.randn(3, **f64, requires_grad=True)
    f = lambda x, c, *ks: ops.rk_combine(x, ks, 0.7, c)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, c, *ks))
    assert torch.autograd.gradgradcheck(f, (x, c, *ks))
    torch.library.opcheck(torch.ops.contnet.rk_combine_learned.default, (x, ks, 0.7, c))
    g = torch.randn(3, 4, **f64, requires_grad=True)
    torch.library.opcheck(torch.ops.contnet.rk_combine_learned_backward.default, (g, ks, 0.7, c))


def test_rk_combine_learned_double_backward_without_terms():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(0, dtype=torch.float64, requires_grad=True)
    out = ops.rk_combine(x, [], 0.7, c)
    gx, gc = torch.autograd.grad((out**2).sum(), [x, c], create_graph=True)
    assert gc.shape == (0,)
    (ggx,) = torch.autograd.grad(gx.sum() + gc.sum(), x)  # through the backward's backward
    torch.testing.assert_close(ggx, torch.full_like(x, 2.0))


def test_rk_combine_skips_zero_coefficients_and_empty():
    x, k = torch.randn(4), torch.randn(4)
    inf = torch.full((4,), float("inf"))
    torch.testing.assert_close(ops.rk_combine(x, [inf, k], 0.5, [0.0, 2.0]), x + k)
    e = torch.empty(0, 3)
    assert ops.rk_combine(e, [e], 0.1, [1.0]).shape == (0, 3)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_combine_kernels_skip_vanishing_coefficients(device, dtype):
    # called through torch.ops (as a compiled graph calls it), not only through the wrapper:
    # a coefficient whose h * c rounds to zero in the accumulation type drops its term, as
    # in the reference and the epilogue
    x, k = torch.randn(4, 5, device=device).to(dtype), torch.randn(4, 5, device=device).to(dtype)
    inf = torch.full_like(x, float("inf"))
    tiny = 2.0**-151 if dtype != torch.float64 else 0.0  # rounds to 0 in float
    for op in (torch.ops.contnet.rk_combine, ops.rk_combine, ops.rk_combine_reference):
        out = op(x, [inf, k, -inf], 0.5, [0.0, 2.0, tiny])
        torch.testing.assert_close(
            out, ops.rk_combine_reference(x, [k], 0.5, [2.0]), rtol=0, atol=0
        )


@pytest.mark.parametrize("device", devices())
def test_rk_combine_deep_permuted_tensors_keep_their_layout(device):
    # 7 dims, dense but permuted: more dims than the CUDA strided index holds
    x = torch.randn(2, 3, 2, 2, 3, 2, 2, device=device).permute(6, 0, 5, 1, 4, 2, 3)
    ks = [torch.randn_like(x) for _ in range(2)]
    out = ops.rk_combine(x, ks, 0.5, [1.0, -2.0])
    assert out.stride() == torch.empty_like(x).stride()
    torch.testing.assert_close(out, ops.rk_combine_reference(x, ks, 0.5, [1.0, -2.0]))
    (g,) = torch.autograd.grad(ops.rk_combine(x.requires_grad_(), ks, 0.5, [1.0, -2.0]).sum(), x)
    torch.testing.assert_close(g, torch.ones_like(x))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rk_combine_cuda_matches_cpu(dtype, layout):
    shape = (3, 17, 9, 33)
    tol = {"rtol": 4 * EPS[dtype], "atol": 8 * EPS[dtype]}
    x, *ks = [rand(shape, dtype, "cpu", layout) for _ in range(4)]
    cs = torch.randn(3).tolist()
    torch.testing.assert_close(
        ops.rk_combine(x.cuda(), [k.cuda() for k in ks], 0.3, cs).cpu(),
        ops.rk_combine(x, ks, 0.3, cs),
        **tol,
    )
    c = torch.randn(3, dtype=dtype)
    torch.testing.assert_close(
        ops.rk_combine(x.cuda(), [k.cuda() for k in ks], 0.3, c.cuda()).cpu(),
        ops.rk_combine(x, ks, 0.3, c),
        **tol,
    )
