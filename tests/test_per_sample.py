"""Per-input adaptive depth: each sample its own steps, the same alone as in any batch; the
work counted per sample and summed; samples grouped by cell where the rate allows; an
inference mode, refused where gradients or batch statistics are needed."""

import copy
import math

import pytest
import torch

import contnet

from .test_adaptive import _piecewise


def _rate(t, x):  # how hard a sample is depends on its size
    return -x * x * x + math.sin(4 * t) * x


def _batch(B=12):
    return torch.linspace(0.1, 3.0, B, dtype=torch.float64).view(-1, 1).repeat(1, 3)


def _solve(x, **kw):
    stats = {}
    with torch.no_grad():
        y = contnet.odeint(_rate, x, scheme="dopri5", rtol=1e-6, per_sample=True, stats=stats, **kw)
    return y, stats


def test_a_sample_takes_the_same_steps_alone_as_in_any_batch():
    x = _batch()
    y, stats = _solve(x)
    for i in (0, 5, 11):
        alone, mine = _solve(x[i : i + 1])
        assert torch.equal(alone, y[i : i + 1])
        for k in ("evaluations", "accepted", "rejected"):
            assert mine[k].item() == stats[k][i].item()
    # in a shuffled batch with others
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    y2, s2 = _solve(x[perm])
    assert torch.equal(y2, y[perm]) and torch.equal(s2["evaluations"], stats["evaluations"][perm])
    # harder samples take more work; the batch-shared solve makes every sample pay the most
    assert stats["evaluations"][0] < stats["evaluations"][-1]
    shared = {}
    with torch.no_grad():
        contnet.odeint(_rate, x, scheme="dopri5", rtol=1e-6, stats=shared)
    assert stats["evaluations"].sum() < 12 * shared["evaluations"]


def test_the_work_is_the_sum_of_each_samples_evaluations():
    rows = []

    def counting(t, x):
        rows.append(x.shape[0])
        return _rate(t, x)

    stats = {}
    with torch.no_grad():
        contnet.odeint(counting, _batch(), scheme="tsit5", rtol=1e-5, per_sample=True,
                       stats=stats)  # fmt: skip
    assert sum(rows) == stats["evaluations"].sum().item()
    assert stats["evaluations"].dtype == torch.int64 and stats["evaluations"].shape == (12,)


def test_samples_in_one_cell_share_a_call_and_give_the_same_answer():
    rate, exact, calls = _piecewise()  # constant in t on each quarter
    x = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64).view(-1, 1)
    jumps = [0.25, 0.5, 0.75]
    kw = dict(scheme="dopri5", rtol=1e-7, atol=1e-9, per_sample=True, jump_t=jumps)
    with torch.no_grad():
        by_time = contnet.odeint(rate, x, **kw)
        n_by_time = len(calls)
        calls.clear()
        by_cell = contnet.odeint(rate, x, cells=jumps, **kw)
    assert len(calls) < n_by_time  # fewer, larger calls
    torch.testing.assert_close(by_cell, by_time, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(by_cell, exact(x), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "basis,K",
    [("piecewise_constant", 4), ("fem_linear", 3), ("piecewise_linear", 4), ("legendre", 3)],
)
def test_a_block_per_sample_is_correct_for_every_basis(basis, K):
    torch.manual_seed(0)
    unit = contnet.ConvUnit(3, n_basis=K, basis=basis, norm="batch").double()
    block = contnet.ContinuousBlock(unit, scheme="dopri5", rtol=1e-6, atol=1e-8,
                                    per_sample=True).eval()  # fmt: skip
    x = torch.randn(5, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
        stats = block.last_stats
        fine = copy.deepcopy(block)
        fine.rtol, fine.atol, fine.per_sample, fine.scheme, fine.n_steps = (
            None,
            None,
            False,
            "rk4",
            128,
        )
        ref = fine(x)
        one = block(x[2:3])
    assert (y - ref).abs().max() < 1e-4
    assert stats["evaluations"].shape == (5,) and (stats["accepted"] >= 1).all()
    torch.testing.assert_close(one, y[2:3], rtol=1e-10, atol=1e-12)


def test_per_sample_is_an_inference_mode():
    x = _batch().requires_grad_()
    with pytest.raises(ValueError, match="per_sample=True is an inference mode"):
        contnet.odeint(_rate, x, scheme="dopri5", rtol=1e-3, per_sample=True)
    unit = contnet.ConvUnit(3, n_basis=2, norm="batch")
    block = contnet.ContinuousBlock(unit, scheme="dopri5", rtol=1e-3, per_sample=True)
    with torch.no_grad(), pytest.raises(ValueError, match=r"call block.eval\(\)"):
        block(torch.randn(2, 3, 4, 4))
    block.eval()
    with pytest.raises(ValueError, match="per_sample=True is an inference mode"):
        block(torch.randn(2, 3, 4, 4))  # parameters that need gradients, grad mode on
    with torch.no_grad():
        assert block(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)
    with pytest.raises(TypeError, match="per_sample must be a bool"):
        block.per_sample = 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(per_sample=True), ValueError, "per_sample are options of adaptive steps: set rtol"),
        (dict(rtol=1e-3, cells=[0.5]), ValueError, "cells is an option of per_sample=True"),
        (dict(rtol=1e-3, per_sample="yes"), TypeError, "per_sample must be a bool"),
        (dict(rtol=1e-3, per_sample=True, t0=1.0, t1=0.0), ValueError, "forward in time"),
        (dict(rtol=1e-3, per_sample=True, cells=["x"]), TypeError, "cells must be a sequence"),
    ],
)
def test_per_sample_misuse_is_refused_by_name(kwargs, error, message):
    with torch.no_grad(), pytest.raises(error, match=message):
        contnet.odeint(_rate, _batch(), scheme="dopri5", **kwargs)
    with torch.no_grad(), pytest.raises(ValueError, match="needs x0 with a batch dimension"):
        contnet.odeint(_rate, torch.tensor(1.0), scheme="dopri5", rtol=1e-3, per_sample=True)


def test_a_half_precision_block_per_sample():
    torch.manual_seed(0)
    unit = contnet.ConvUnit(4, n_basis=2)
    block = contnet.ContinuousBlock(unit, scheme="dopri5", rtol=1e-3, per_sample=True).eval()
    block = block.to(torch.bfloat16)
    with torch.no_grad():
        y = block(torch.randn(3, 4, 5, 5).bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert block.last_stats["evaluations"].shape == (3,)
