"""The Unit protocol: what a block needs of a unit, and what ConvUnit offers."""

import pytest
import torch
from torch import nn

import contnet
from contnet.nn.protocol import PassSplitUnit, SplitUnit, Unit, conforms


@pytest.mark.parametrize("norm", [None, "batch"])
def test_conv_unit_satisfies_every_unit_protocol(norm):
    unit = contnet.ConvUnit(4, n_basis=2, norm=norm)
    for protocol in (Unit, SplitUnit, PassSplitUnit):
        assert isinstance(unit, protocol), protocol.__name__
        assert conforms(unit, protocol)
    assert unit.n_basis == unit.basis.n_basis == 2
    tensors = unit.basis_tensors()
    assert tensors and all(stack.shape[0] == 2 for stacks in tensors.values() for stack in stacks)


def test_a_plain_rate_is_not_a_unit():
    class Rate(nn.Module):
        def forward(self, t, x):
            return torch.tanh(x) * t

    rate = Rate()
    assert not conforms(rate, Unit)
    assert not conforms(rate, SplitUnit)
    # the block integrates it all the same, given its step count
    block = contnet.ContinuousBlock(rate, scheme="rk4", n_steps=4)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="n_steps"):
        contnet.ContinuousBlock(rate, scheme="rk4")
