"""Inputs and error bounds shared by the tests of the fused ops: dtypes, layouts, sizes,
unit roundoffs, and the bound of a kernel's error by eager PyTorch's in the same dtype."""

import torch

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


LAYOUTS = ["contiguous", "channels_last", "sliced"]


# shapes (4-d, so channels_last applies) of 0, 1, 3, 1023 and 2^20 + 1 elements
SHAPES = [(0, 3, 4, 4), (1, 1, 1, 1), (1, 3, 1, 1), (1, 3, 11, 31), (1, 17, 1, 61681)]


# unit roundoff per dtype
EPS = {torch.float32: 6e-8, torch.float64: 1.1e-16, torch.float16: 4.9e-4, torch.bfloat16: 3.9e-3}


def layout_of(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        big = torch.empty(x.shape[:-1] + (2 * x.shape[-1] + 1,), dtype=x.dtype, device=x.device)
        big[..., 1::2] = x
        return big[..., 1::2]
    return x


def rand(shape, dtype, device, layout):
    return layout_of(torch.randn(shape, device=device).to(dtype), layout)


def check_error(out, exact, eager, dtype, terms=1):
    """The kernel's error against an upcast reference is within twice eager PyTorch's
    error in the same dtype, or a few roundoffs of the result's magnitude."""
    assert out.dtype == dtype
    if out.numel() == 0:
        return
    err = (out.double() - exact).abs().max().item()
    eager_err = (eager.double() - exact).abs().max().item()
    floor = (terms + 2) * EPS[dtype] * (exact.abs().max().item() + 1.0)
    assert err <= max(2 * eager_err, floor), (err, eager_err, floor)
