"""A ContinuousBlock with a tolerance: every basis, the basis's cell edges as jump and kink
times, gradients and batch statistics as on the recorded grid, last_stats, misuse."""

import copy

import pytest
import torch

import contnet
from contnet.integrate.adaptive import GridStepper
from contnet.integrate.steppers import march

BASES = [("piecewise_constant", 4), ("fem_linear", 3), ("piecewise_linear", 4), ("legendre", 3)]


def test_cell_edges_are_jumps_or_kinks():
    get = contnet.basis.get
    assert get("piecewise_constant", 4).jumps_and_kinks() == ([0.25, 0.5, 0.75], [])
    assert get("piecewise_linear", 4).jumps_and_kinks() == ([0.5], [])
    assert get("fem_linear", 3).jumps_and_kinks() == ([], [0.5])
    assert get("legendre", 3).jumps_and_kinks() == ([], [])
    assert get("piecewise_constant", 1).jumps_and_kinks() == ([], [])


def _block(basis, K, norm=None, seed=0, **kw):
    torch.manual_seed(seed)
    unit = contnet.ConvUnit(3, n_basis=K, basis=basis, norm=norm).double()
    return contnet.ContinuousBlock(unit, scheme="dopri5", rtol=1e-6, atol=1e-8, **kw)


@pytest.mark.parametrize("basis,K", BASES)
def test_a_block_meets_its_tolerance_on_every_basis(basis, K):
    block = _block(basis, K).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
        stats = block.last_stats
        fine = copy.deepcopy(block)
        fine.rtol, fine.atol, fine.scheme, fine.n_steps = None, None, "rk4", 128
        ref = fine(x)
    assert (y - ref).abs().max() < 1e-4
    assert stats["accepted"] >= 1 and stats["evaluations"] >= 6 * stats["accepted"]
    assert fine.last_stats == {"evaluations": 512, "accepted": 128, "rejected": 0}


def _recorded_grid(block, x):
    stats = {}
    with torch.no_grad(), contnet.nn.frozen_batch_stats(block.unit):
        jumps, kinks = block.unit.basis.jumps_and_kinks()
        contnet.odeint(block.unit, x, scheme="dopri5", rtol=block.rtol, atol=block.atol,
                       jump_t=jumps, kink_t=kinks, stats=stats)  # fmt: skip
    return stats["steps"]


@pytest.mark.parametrize("basis,K", [("piecewise_constant", 4), ("fem_linear", 3)])
def test_training_through_a_block_is_training_on_its_recorded_grid(basis, K):
    block = _block(basis, K, norm="batch").train()
    block.rtol, block.atol = 1e-4, 1e-6
    twin = copy.deepcopy(block)
    torch.manual_seed(2)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    xc = x.contiguous(memory_format=torch.channels_last)  # as the block runs it on the CPU
    grid = _recorded_grid(block, xc)
    y = block(x)
    loss = (y * torch.cos(y)).sum()
    grads = torch.autograd.grad(loss, [x, *block.parameters()])
    # the same grid stepped as fixed steps, plainly
    stepper = GridStepper(twin.unit, contnet.schemes.get("dopri5"), grid)
    y2 = march(stepper, (xc,))[0].contiguous()
    assert torch.equal(y, y2)
    want = torch.autograd.grad((y2 * torch.cos(y2)).sum(), [x, *twin.parameters()])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=0)
    # batch statistics counted the accepted steps once, the controller's trials not at all
    for a, b in zip(block.buffers(), twin.buffers()):
        assert torch.equal(a, b)
    # and checkpointed the same
    ck = copy.deepcopy(twin)
    ck.backprop = "checkpoint"
    y3 = ck(x)
    got = torch.autograd.grad((y3 * torch.cos(y3)).sum(), [x, *ck.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_misuse_of_a_blocks_tolerance_is_refused_by_name():
    unit = contnet.ConvUnit(3, n_basis=2)
    with pytest.raises(ValueError, match="scheme 'rk4' has no embedded error estimate"):
        contnet.ContinuousBlock(unit, scheme="rk4", rtol=1e-3)
    with pytest.raises(ValueError, match="scheme 'lm' is multistep"):
        contnet.ContinuousBlock(unit, scheme="lm", rtol=1e-3)
    block = contnet.ContinuousBlock(unit, scheme="tsit5")
    with pytest.raises(ValueError, match="rtol must be a finite number > 0, got -1"):
        block.rtol = -1
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        block.atol = -1e-3
    with pytest.raises(TypeError, match="controller must be a Controller or None"):
        block.controller = "pi"
    x = torch.randn(1, 3, 4, 4)
    block.atol = 1e-3
    with pytest.raises(ValueError, match="atol=0.001 is set without rtol"):
        block(x)
    block.rtol = 1e-3
    with pytest.raises(ValueError, match="block.rtol is 0.001: .* got 'rk4'"):
        block.scheme = "rk4"  # a fixed-step scheme set after the tolerance: refused at once
    block.rtol, block.scheme, block.rtol = None, "rk4", 1e-3  # before it: at the next call
    with pytest.raises(ValueError, match="scheme 'rk4' has no embedded error estimate"):
        block(x)
    block.rtol, block.atol = None, None
    assert block(x).shape == x.shape and block.last_stats["rejected"] == 0


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of a tensor's values on the host."""

    NAMES = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.NAMES
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("per_sample", [False, True])
def test_one_host_read_per_step(per_sample):
    """Four reads to start (the finite check, Hairer's three norms), then one per step (per
    iteration of the per-sample mode): the error op's norm; nothing else leaves the device."""
    block = _block("piecewise_constant", 4, per_sample=per_sample).eval()
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for rtol in (1e-3, 1e-7):
        block.rtol = rtol
        with torch.no_grad(), _HostReads() as reads:
            block(x)
        tries = block.last_stats["accepted"] + block.last_stats["rejected"]
        steps = int(tries.max()) if per_sample else tries
        assert reads.count == steps + 4, (rtol, reads.count, steps)


def test_fused_and_unfused_stages_take_the_same_steps():
    """A unit whose tail fuses into the stage updates (its split) and the same unit with a
    hook on it (which turns the fusion off) take the same adaptive steps to roundoff."""
    block = _block("piecewise_constant", 4).eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        fused = block(x)
        fused_stats = block.last_stats
        handle = block.unit.register_forward_hook(lambda m, i, o: None)
        assert contnet.integrate.split_of(block.unit) is None
        plain = block(x)
        handle.remove()
    assert contnet.integrate.split_of(block.unit) is not None
    assert block.last_stats == fused_stats
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)


def test_a_blocks_scheme_and_tolerance_change_together():
    """What a user's audit found: eval's fixed rows and set_manifestation left a block's
    tolerance in place (eval of a compressed adaptive checkpoint failed; dopri5 with 16
    steps silently stayed adaptive)."""
    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 10, widths=(4, 8), n_basis=2).eval()
    for b in net.blocks():
        b.manifest("dopri5", b.n_steps, 1e-3, 1e-5)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    table = contnet.evaluation.manifestation_table(net, x, y, ["rk4"], [2], reference=("rk4", 8))
    assert set(table["rows"]) == {"rk4"}
    assert [(b.scheme, b.rtol, b.atol) for b in net.blocks()] == [("dopri5", 1e-3, 1e-5)] * 2
    with pytest.raises(ValueError, match=r"block.rtol is 0.001: .*embedded pair.*manifest"):
        net.blocks()[0].scheme = "rk4"
    net.set_manifestation("dopri5", 16)  # fixed steps of dopri5's 5th-order solution
    assert [(b.rtol, b.n_steps) for b in net.blocks()] == [(None, 16)] * 2
    with torch.no_grad():
        net(x)
    assert net.blocks()[0].last_stats == {"evaluations": 96, "accepted": 16, "rejected": 0}
    unit = contnet.ConvUnit(3, n_basis=2)
    with pytest.raises(ValueError, match="n_steps .* or rtol .*not both"):
        contnet.ContinuousBlock(unit, scheme="dopri5", rtol=1e-3, n_steps=4)
    block = contnet.ContinuousBlock(unit, scheme="dopri5", per_sample=True).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="per_sample=True is set without rtol"):
        block(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="embedded pair"):
        block.manifest("rk4", 4, 1e-3)
    with pytest.raises(ValueError, match="atol"):
        block.manifest("rk4", 4, None, 1e-3)
    assert (block.scheme, block.rtol) == ("dopri5", None)  # a refused manifest changes nothing
