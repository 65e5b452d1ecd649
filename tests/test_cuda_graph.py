"""Small-batch inference replayed from a CUDA graph (and torch.compile's reduce-overhead):
equal to eager, and what cannot be captured refused."""

import pytest
import torch

import contnet


def test_cuda_graph_refuses_what_it_cannot_capture():
    net = contnet.ContinuousNet(1, 10, widths=(4, 8)).eval()
    with pytest.raises(ValueError, match="needs an example input on a CUDA device"):
        contnet.cuda_graph(net, torch.randn(2, 1, 8, 8))
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        contnet.cuda_graph(lambda x: x, torch.randn(2))
    net.stages[1].scheme, net.stages[1].rtol = "dopri5", 1e-3
    with pytest.raises(ValueError, match=r"block\(s\) stages.1 step to a tolerance \(rtol\)"):
        contnet.cuda_graph(net, torch.randn(2, 1, 8, 8))


@pytest.mark.cuda
@pytest.mark.parametrize("basis,K", [("piecewise_constant", 4), ("fem_linear", 3)])
def test_cuda_graph_equals_eager(basis, K):
    net = contnet.ContinuousNet(3, 10, n_basis=K, basis=basis, scheme="rk4").cuda().eval()
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    graphed = contnet.cuda_graph(net, x)
    with torch.no_grad():
        for _ in range(2):
            x.normal_()
            torch.testing.assert_close(graphed(x), net(x))
    with pytest.raises(ValueError, match="must match the captured input"):
        graphed(torch.randn(4, 3, 32, 32, device="cuda"))


@pytest.mark.cuda
def test_compile_reduce_overhead_equals_eager():
    torch._dynamo.reset()
    net = contnet.ContinuousNet(3, 10, n_basis=2, scheme="rk4").cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    compiled = torch.compile(net, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for _ in range(3):
            out = compiled(x)
        torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)
