"""The whole CUDA path: blocks through the CUDA kernels against the reference path, every
backprop mode, mixed precision, channels_last and compiled training on a GPU."""

import pytest
import torch
import torch.nn.functional as F

import contnet
from contnet import ops

from .helpers import autocast_errors

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("basis,K", [("piecewise_constant", 4), ("fem_linear", 3)])
@pytest.mark.parametrize("scheme", ["euler", "rk4", "ab2", "lm"])
@pytest.mark.parametrize("backprop", ["direct", "checkpoint", "adjoint"])
def test_block_on_cuda_matches_reference_path(basis, K, scheme, backprop):
    if backprop == "adjoint" and scheme in ("ab2", "lm"):
        pytest.skip("adjoint runs one-step schemes")
    unit = contnet.ConvUnit(6, n_basis=K, basis=basis, norm="batch")
    block = contnet.ContinuousBlock(unit, scheme=scheme, n_steps=3, backprop=backprop)
    block = block.double().cuda()
    x = torch.randn(3, 6, 7, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    params = list(block.parameters())

    def run():
        out = block(x)
        return (out, *torch.autograd.grad((out * torch.sin(out)).sum(), [x, *params]))

    fused = run()
    with ops.use_reference():
        ref = run()
    cpu_block = block.cpu()
    xc = x.detach().cpu().requires_grad_()
    out_c = cpu_block(xc)
    cpu = (out_c, *torch.autograd.grad((out_c * torch.sin(out_c)).sum(), [xc, *params]))
    tol = {"rtol": 1e-9, "atol": 1e-10} if backprop == "adjoint" else {"rtol": 1e-11, "atol": 1e-12}
    for a, r, c in zip(fused, ref, cpu):
        torch.testing.assert_close(a, r, **tol)
        torch.testing.assert_close(a.cpu(), c, **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cuda_error_within_twice_eager_pytorch(dtype):
    net = contnet.ContinuousNet(3, 10, widths=(16, 32), n_basis=2, basis="fem_linear").cuda()
    net = net.eval()
    x = torch.randn(8, 3, 16, 16, device="cuda")
    fused, eager = autocast_errors(net, x, dtype)
    assert fused <= 2 * eager + 1e-6, (fused, eager)


def test_float16_autocast_trains_on_cuda_channels_last():
    cl = torch.channels_last
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 3, 16, 16, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # a learnable label
    x, y = x.cuda().contiguous(memory_format=cl), y.cuda()
    net = contnet.ContinuousNet(3, 2, widths=(16, 32), n_basis=2).cuda().to(memory_format=cl)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    seen = []
    hook = net.stages[0].register_forward_hook(
        lambda m, i, o: seen.append(o.is_contiguous(memory_format=cl))
    )
    losses = []
    for i in range(40):
        idx = slice(32 * (i % 8), 32 * (i % 8) + 32)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    hook.remove()
    assert all(seen)
    assert all(p.grad is not None and torch.isfinite(p).all() for p in net.parameters())
    assert sum(losses[-8:]) < 0.8 * sum(losses[:8]), losses


def test_compile_reduce_overhead_training_step_equals_eager():
    torch._dynamo.reset()
    net = contnet.ContinuousNet(3, 10, widths=(8, 16), n_basis=2, basis="fem_linear").cuda()
    x = torch.randn(8, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    params = list(net.parameters())
    compiled = torch.compile(net, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up and capture
        loss_c = F.cross_entropy(compiled(x), y)
        grads_c = [g.clone() for g in torch.autograd.grad(loss_c, params)]
    loss_e = F.cross_entropy(net(x), y)
    grads_e = torch.autograd.grad(loss_e, params)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
