"""basis_interp against its reference: dtypes x layouts x sizes, channels_last filter
banks read in place, no stage times, the backward's scatter into the nodes, opcheck and
float64 gradcheck, CPU/CUDA parity."""

import pytest
import torch

import contnet
from contnet import ops

from .helpers import devices
from .op_cases import DTYPES, EPS, LAYOUTS, SHAPES, check_error, rand


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
def test_basis_interp_matches_reference(device, dtype, layout, shape):
    K = 3
    b = contnet.basis.get("fem_linear", K)
    phi = b(torch.rand(6).tolist()).to(device)
    thetas = [
        rand((K,) + shape[1:], dtype, device, layout),
        torch.randn(K, 5, device=device).to(dtype),
    ]
    outs = ops.basis_interp(phi, thetas)
    exact = ops.basis_interp_reference(phi, [t.double() for t in thetas])
    for out, ex, t in zip(outs, exact, thetas):
        # the nodes' layout where each node is one dense block (channels_last here), else
        # contiguous (sliced)
        assert out.shape == (6,) + t.shape[1:]
        if layout == "sliced" and t.dim() == 4 and t.numel() > 1:
            assert out.is_contiguous()
        elif t.numel() > 0:
            assert out.stride()[1:] == t.stride()[1:] and out.stride(0) == t[0].numel()
        eager = torch.einsum("sk,k...->s...", phi.to(dtype), t)
        check_error(out, ex, eager, dtype, K)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("family,K", [("fem_linear", 4), ("legendre", 3), ("piecewise_linear", 4)])
def test_basis_interp_gradcheck_and_opcheck(family, K, device):
    phi = contnet.basis.get(family, K)(torch.rand(5).tolist()).to(device)
    thetas = [
        torch.randn(K, 3, 2, dtype=torch.float64, device=device, requires_grad=True),
        torch.randn(K, 4, dtype=torch.float64, device=device, requires_grad=True),
    ]
    f = lambda *ts: tuple(ops.basis_interp(phi, list(ts)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(thetas))
    assert torch.autograd.gradgradcheck(f, tuple(thetas))
    torch.library.opcheck(torch.ops.contnet.basis_interp.default, (phi, thetas))


@pytest.mark.parametrize("device", devices())
def test_basis_interp_keeps_channels_last_filter_banks(device):
    """Nodes stacked as channels_last filter banks (as a channels_last ContinuousBlock keeps
    them) give weights in that layout, with no copy of the nodes, and the nodes' gradient
    comes back in it; values, gradients and opcheck (the fake kernel's strides) agree."""
    K, S = 3, 5
    phi = contnet.basis.get("fem_linear", K)(torch.rand(S).tolist()).to(device)
    bank = torch.randn(K * 6, 4, 3, 3, dtype=torch.float64, device=device)
    theta = bank.contiguous(memory_format=torch.channels_last).unflatten(0, (K, 6))
    theta.requires_grad_()
    assert not theta.is_contiguous()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        (out,) = ops.basis_interp(phi, [theta])
    copies = [e.name for e in prof.events() if e.name in ("aten::contiguous", "aten::clone")]
    assert copies == []
    assert out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    (ref,) = ops.basis_interp_reference(phi, [theta.detach()])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, theta, g)
    assert grad.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad, torch.einsum("sk,s...->k...", phi, g), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ops.basis_interp(phi, [t])[0], (theta,))
    torch.library.opcheck(torch.ops.contnet.basis_interp.default, (phi, [theta]))
    # a node stack whose nodes are not dense blocks is read through a contiguous copy
    sliced = torch.randn(K, 6, 8, device=device, dtype=torch.float64)[:, :, ::2]
    (out,) = ops.basis_interp(phi, [sliced])
    assert out.is_contiguous()
    # the layouts where the kernels' rule and the fake kernel's could part: one node with
    # any stride along dim 0, size-1 dims with odd strides, transposed and expanded nodes
    one = contnet.basis.get("fem_linear", 2)(torch.rand(S).tolist()).to(device)[:, :1]
    odd = [
        torch.randn(6, 1, 5, device=device, dtype=torch.float64).transpose(0, 1),
        torch.randn(K, 1, 4, device=device, dtype=torch.float64).as_strided(
            (K, 1, 4), (4, 1000, 1)
        ),
        torch.randn(K, 5, 4, device=device, dtype=torch.float64).transpose(1, 2),
        torch.randn(1, 4, device=device, dtype=torch.float64).expand(K, 4),
    ]
    for theta_ in [sliced, *odd]:
        p = one if theta_.shape[0] == 1 else phi
        (out,) = ops.basis_interp(p, [theta_])
        torch.testing.assert_close(out, ops.basis_interp_reference(p, [theta_])[0])
        torch.library.opcheck(torch.ops.contnet.basis_interp.default, (p, [theta_]))


def test_basis_interp_of_no_stage_times():
    theta = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    (w,) = ops.basis_interp(torch.zeros(0, 3, dtype=torch.float64), [theta])
    assert w.shape == (0, 2, 5)
    (g,) = torch.autograd.grad(w.sum(), theta)
    torch.testing.assert_close(g, torch.zeros_like(theta), rtol=0, atol=0)


def test_basis_interp_backward_scatters_into_nodes():
    phi = contnet.basis.get("fem_linear", 3)([0.25, 0.5, 0.75])
    theta = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    (w,) = ops.basis_interp(phi, [theta])
    g = torch.randn(3, 2, dtype=torch.float64)
    (gt,) = torch.autograd.grad(w, theta, g)
    torch.testing.assert_close(gt, phi.T @ g)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_basis_interp_cuda_matches_cpu(dtype, layout):
    shape = (3, 17, 9, 33)
    tol = {"rtol": 4 * EPS[dtype], "atol": 8 * EPS[dtype]}
    phi = contnet.basis.get("legendre", 3)(torch.rand(7).tolist())
    th = [torch.randn(3, 5, 4).to(dtype), rand((3,) + shape[1:], dtype, "cpu", layout)]
    outs = ops.basis_interp(phi.cuda(), [t.cuda() for t in th])
    for a, e in zip(outs, ops.basis_interp(phi, th)):
        torch.testing.assert_close(a.cpu(), e, **tol)
