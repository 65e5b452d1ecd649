"""Stochastic depth of a block's steps: nothing changes in eval; in training each step's
update is dropped with its depth's probability and kept ones rescaled (the expected update
is the step's); LM-ResNet drops its rate term only; checkpointing replays the same drops;
what cannot take it refuses by name."""

import copy

import pytest
import torch
from torch import nn

import contnet
from contnet.block import StochasticDepth

F64 = torch.float64


class Constant(nn.Module):
    """The rate ``c``: every step's update is ``h c``, whatever the state."""

    def __init__(self, c=1.0):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=F64))

    def forward(self, t, x):
        return self.c * torch.ones_like(x)


def _block(scheme="rk4", p=0.5, **kw):
    torch.manual_seed(0)
    unit = contnet.ConvUnit(3, n_basis=2, norm=None).double()
    return contnet.ContinuousBlock(unit, scheme=scheme, n_steps=4, stochastic_depth=p, **kw)


@pytest.mark.parametrize("scheme", ["rk4", "ab2", "lm"])
def test_eval_computes_what_the_block_computes_without_it(scheme):
    block = _block(scheme).eval()
    plain = copy.deepcopy(block)
    plain.stochastic_depth = 0.0
    x = torch.randn(4, 3, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(block(x), plain(x))
    assert "stochastic_depth=0.5 (row, linear)" in repr(block)


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_each_steps_update_drops_with_its_depths_probability(mode, schedule):
    N, p, B = 4, 0.6, 20000
    block = contnet.ContinuousBlock(Constant(), scheme="euler", n_steps=N, stochastic_depth=p,
                                    stochastic_depth_mode=mode, stochastic_depth_schedule=schedule)  # fmt: skip
    sd = block.stochastic_depth
    torch.manual_seed(2)
    x = torch.zeros(B, 1, dtype=F64)
    rounds = 1 if mode == "row" else 4000
    outs = torch.cat([block.train()(x[: B // rounds]) for _ in range(rounds)])
    # each step adds h * factor: its factor 0 (dropped) or 1 / (1 - p_n)
    probs = [sd.probability(n / N) for n in range(N)]
    assert probs == ([p * n / N for n in range(N)] if schedule == "linear" else [p] * N)
    # the expected output is the undropped one (1); its spread that of N independent drops
    var = sum((1 / N) ** 2 * (q / (1 - q)) for q in probs)
    assert abs(outs.mean().item() - 1.0) < 5 * (var / len(outs)) ** 0.5
    assert abs(outs.var().item() - var) < 0.1 * var + 1e-12
    if mode == "batch":  # a batch drops together
        y = block(x[:50])
        assert torch.all(y == y[0])


def test_lm_resnet_drops_its_rate_term_only():
    """Lu et al.'s form: x_{n+1} = (1 - k_n) x_n + k_n x_{n-1} + eta_n h f(t_n, x_n)."""
    torch.manual_seed(0)
    unit = contnet.ConvUnit(3, n_basis=2, norm=None).double()
    block = contnet.ContinuousBlock(unit, scheme="lm", n_steps=4)
    with torch.no_grad():
        block.lm.theta.fill_(0.3)
    x = torch.randn(2, 3, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    k = block.lm.at(contnet.integrate.rate_times("lm", 4))
    zeros = [torch.zeros((), dtype=F64)] * 4
    dropped = contnet.odeint(unit, x, scheme="lm", n_steps=4, lm_k=k, update_factors=zeros)
    still = contnet.odeint(lambda t, x: torch.zeros_like(x), x, scheme="lm", n_steps=4, lm_k=k)
    torch.testing.assert_close(dropped, still, rtol=1e-14, atol=1e-14)  # the momentum remains
    ones = [torch.ones((), dtype=F64)] * 4
    torch.testing.assert_close(
        contnet.odeint(unit, x, scheme="lm", n_steps=4, lm_k=k, update_factors=ones),
        contnet.odeint(unit, x, scheme="lm", n_steps=4, lm_k=k),
        rtol=1e-14,
        atol=1e-14,
    )


@pytest.mark.parametrize("scheme", ["rk4", "ab2", "lm"])
def test_checkpointing_replays_the_same_drops(scheme):
    x = torch.randn(6, 3, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(4))
    grads, outs = [], []
    for backprop in ("direct", "checkpoint"):
        block = _block(scheme, p=0.5, backprop=backprop).train()
        torch.manual_seed(7)
        y = block(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad for p in block.parameters()])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    plain = _block(scheme, p=0.0).train()  # and the drops did drop
    assert not torch.allclose(plain(x), outs[0])


def _gradients(backprop, n, x):
    torch.manual_seed(0)
    unit = contnet.ConvUnit(3, n_basis=2, norm=None).double()
    block = contnet.ContinuousBlock(unit, scheme="rk4", n_steps=n, stochastic_depth=0.3,
                                    backprop=backprop).train()  # fmt: skip
    torch.manual_seed(7)
    y = block(x)
    y.square().sum().backward()
    return y.detach(), torch.cat([p.grad.flatten() for p in block.parameters()])


def test_the_adjoint_steps_back_through_dropped_and_kept_updates():
    """A dropped update is undone exactly, a kept (rescaled) one by the back step scaled
    alike: the gradient approaches checkpoint's as the steps shrink."""
    x = torch.randn(6, 3, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(4))
    errors = []
    for n in (4, 16):
        (ya, ga), (yc, gc) = _gradients("adjoint", n, x), _gradients("checkpoint", n, x)
        assert torch.equal(ya, yc)
        errors.append(((ga - gc).norm() / gc.norm()).item())
    assert errors[0] < 5e-3 and errors[1] < errors[0] / 4
    unit = contnet.ConvUnit(3, n_basis=2, norm=None).double()
    x0 = x.clone().requires_grad_()
    zeros = [torch.zeros((), dtype=F64)] * 4  # every update dropped: the identity, exactly
    y = contnet.odeint(unit, x0, n_steps=4, backprop="adjoint", update_factors=zeros)
    (g,) = torch.autograd.grad(y.sum(), x0)
    assert torch.equal(y, x) and torch.equal(g, torch.ones_like(x))


def test_what_cannot_take_it_refuses_by_name():
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    block = _block("dopri5", p=0.5)
    block.rtol = 1e-3
    with pytest.raises(ValueError, match="stochastic depth drops the updates of fixed steps"):
        block.train()(x)
    with torch.no_grad():
        assert torch.isfinite(block.eval()(x)).all()
    for bad, message in (
        ({"p": 1.0}, "stochastic_depth must be a probability"),
        ({"p": -0.1}, "stochastic_depth must be a probability"),
        ({"p": 0.1, "mode": "sample"}, "stochastic_depth_mode"),
        ({"p": 0.1, "schedule": "cosine"}, "stochastic_depth_schedule"),
        ({"schedule": "cells"}, "goes with cells"),
        ({"cells": (0.1, 0.2)}, "goes with cells"),
        ({"schedule": "cells", "cells": (0.1, 1.0)}, r"cells\[1\] must be a probability"),
        ({"schedule": "cells", "cells": ()}, "one drop probability per cell"),
    ):
        with pytest.raises(ValueError, match=message):
            StochasticDepth(**bad)
    with pytest.raises(ValueError, match="update_factors must hold one entry per step"):
        contnet.odeint(lambda t, x: x, x, n_steps=2, update_factors=[None])
    with pytest.raises(ValueError, match="update_factors need fixed steps"):
        contnet.odeint(lambda t, x: x, x, scheme="dopri5", rtol=1e-3, update_factors=[None])


def test_a_compiled_block_draws_the_same_drops():
    torch.manual_seed(0)
    unit = contnet.ConvUnit(4, n_basis=2, norm=None)
    block = contnet.ContinuousBlock(unit, scheme="rk4", stochastic_depth=0.5).train()
    x = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    compiled = torch.compile(block)
    torch.manual_seed(1)
    got = compiled(x)
    torch.manual_seed(1)
    want = block(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_keeps_each_blocks_stochastic_depth(tmp_path):
    from contnet import training as train

    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2)
    first, second = net.blocks()
    first.stochastic_depth = StochasticDepth(0.3, "batch", "constant")
    second.stochastic_depth = StochasticDepth(mode="row", schedule="cells", cells=(0.1, 0.2))
    path = train.save_checkpoint(tmp_path / "ck.pt", net)
    again = train.model_from_checkpoint(train.load_checkpoint(path))
    assert [b.stochastic_depth for b in again.blocks()] == [
        b.stochastic_depth for b in net.blocks()
    ]
    first.stochastic_depth = 0.0  # saved without: loading clears a built block's
    path = train.save_checkpoint(tmp_path / "none.pt", net)
    train.load_model_state(train.load_checkpoint(path), again)
    assert not again.blocks()[0].stochastic_depth.active
    assert again.blocks()[1].stochastic_depth.cells == (0.1, 0.2)
