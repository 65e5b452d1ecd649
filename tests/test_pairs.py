"""Embedded Runge-Kutta pairs: their tableaux checked against Butcher's order conditions in
exact fractions, each pair's order as a fixed-step scheme and the order of its error
estimate, on an ODE with a known solution."""

import math
from fractions import Fraction

import pytest
import torch

import contnet
from contnet import schemes

from .test_schemes import _exact, _initial, _rate, _slope

PAIRS = ["heun_euler", "bosh3", "dopri5", "tsit5"]
RK = [n for n in schemes.names() if not schemes.get(n).multistep]
F = Fraction


def test_rooted_trees_are_counted_as_butcher_counts_them():
    assert [len(schemes.rooted_trees(n)) for n in range(1, 7)] == [1, 1, 2, 4, 9, 20]
    assert all(len(set(schemes.rooted_trees(n))) == len(schemes.rooted_trees(n)) for n in (5, 6))


@pytest.mark.parametrize("name", RK)
def test_every_tableau_has_exactly_its_declared_order(name):
    tab = schemes.get(name)
    res = schemes.order_residuals(tab.exact_a, tab.exact_b, tab.order + 1)
    upto = [abs(r) for tree, r in res if _nodes(tree) <= tab.order]
    above = [abs(r) for tree, r in res if _nodes(tree) == tab.order + 1]
    assert max(upto) <= tab.tolerance  # zero for a rational tableau
    assert max(above) > 1e-6  # and no higher: the declared order is the order


def _nodes(tree):
    return 1 + sum(_nodes(t) for t in tree)


@pytest.mark.parametrize("name", PAIRS)
def test_a_pair_is_registered_by_its_higher_order_solution(name):
    tab = schemes.get(name)
    assert tab.embedded and name in schemes.PAIRS
    assert (tab.order, tab.embedded_order) == {
        "heun_euler": (2, 1), "bosh3": (3, 2), "dopri5": (5, 4), "tsit5": (5, 4)
    }[name]  # fmt: skip
    assert tab.stages == {"heun_euler": 2, "bosh3": 3, "dopri5": 6, "tsit5": 6}[name]
    assert tab.fsal == (name != "heun_euler")
    e = tab.error_weights
    assert len(e) == tab.stages + tab.fsal and abs(sum(e)) < 1e-15
    if name != "tsit5":
        assert tab.tolerance == 0  # rational: verified exactly


def test_tableau_validation_names_what_fails():
    heun = ((0, 0), (1, 0)), (F(1, 2), F(1, 2)), (0, 1)
    with pytest.raises(ValueError, match=r"'bad': b misses the order-3 condition"):
        schemes.ButcherTableau("bad", *heun, 3)
    with pytest.raises(ValueError, match="bhat must have 2 weights \\(or 3"):
        schemes.ButcherTableau("bad", *heun, 2, exact_bhat=(1,), embedded_order=1)
    with pytest.raises(ValueError, match="weights bhat sum to 1/2"):
        schemes.ButcherTableau("bad", *heun, 2, exact_bhat=(F(1, 2), 0), embedded_order=1)
    with pytest.raises(ValueError, match=r"embedded_order must be an int in \[1, 1\], got 2"):
        schemes.ButcherTableau("bad", *heun, 2, exact_bhat=(1, 0), embedded_order=2)
    with pytest.raises(ValueError, match="bhat misses the order-2 condition"):
        rk3 = schemes.get("rk3")  # with Euler as a claimed order-2 estimate
        schemes.ButcherTableau("bad", rk3.exact_a, rk3.exact_b, rk3.exact_c, 3,
                               exact_bhat=(1, 0, 0), embedded_order=2)  # fmt: skip
    with pytest.raises(ValueError, match="embedded_order given without bhat"):
        schemes.ButcherTableau("bad", *heun, 2, embedded_order=1)
    with pytest.raises(ValueError, match="has no embedded error estimate"):
        _ = schemes.get("rk4").error_weights
    # a published tableau off in its 4th digit is refused at the tolerance of its digits
    tsit5 = schemes.get("tsit5")
    b = list(tsit5.exact_b)
    b[1], b[2] = b[1] + F(1, 10**4), b[2] - F(1, 10**4)
    with pytest.raises(ValueError, match="b misses the order-2 condition of tree"):
        schemes.ButcherTableau("bad", tsit5.exact_a, tuple(b), tsit5.exact_c, 5,
                               tolerance=tsit5.tolerance)  # fmt: skip


@pytest.mark.parametrize("name", PAIRS)
def test_a_pair_converges_at_its_order_with_fixed_steps(name):
    # x' = 2 cos(3t) x, x(1) = x0 exp(2 sin(3) / 3): a rate that depends on time, whose
    # leading error term keeps its sign (the test ODE of test_schemes has components where
    # a 5th-order term nearly vanishes and the next one shows through)
    steps = (16, 32, 64, 128)
    x0 = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    ref = x0 * math.exp(2 * math.sin(3.0) / 3)
    rate = lambda t, x: 2 * math.cos(3 * t) * x  # noqa: E731
    errs = [(contnet.odeint(rate, x0, scheme=name, n_steps=n) - ref).abs().max().item()
            for n in steps]  # fmt: skip
    assert abs(_slope(steps, errs) - schemes.get(name).order) < 0.5, errs


@pytest.mark.parametrize("name", PAIRS)
def test_a_fixed_step_of_a_pair_evaluates_the_rate_once_per_stage(name):
    calls = []

    def f(t, x):
        calls.append(t)
        return -x

    contnet.odeint(f, torch.ones(2, dtype=torch.float64), scheme=name, n_steps=3)
    assert len(calls) == 3 * schemes.get(name).stages  # dopri5: 6, not 7


def _one_step(tab, x, t, h):
    """One step of ``tab`` in float64, plainly: the solution of b, the embedded error
    estimate ``h sum (b_i - bhat_i) k_i`` (with the rate at the step's end if fsal), and
    the embedded solution."""
    ks = []
    for i in range(tab.stages):
        xi = x + h * sum((a * k for a, k in zip(tab.a[i][:i], ks)), torch.zeros_like(x))
        ks.append(_rate(t + tab.c[i] * h, xi))
    x1 = x + h * sum(b * k for b, k in zip(tab.b, ks))
    if tab.fsal:
        ks.append(_rate(t + h, x1))
    est = h * sum(e * k for e, k in zip(tab.error_weights, ks))
    return x1, est, x1 - est


@pytest.mark.parametrize("name", PAIRS)
def test_the_error_estimate_has_the_embedded_order(name):
    tab = schemes.get(name)
    torch.manual_seed(1)
    x0 = _initial()
    hs = [2.0**-k for k in (3, 4, 5, 6)]
    ests, lows = [], []
    for h in hs:
        x1, est, low = _one_step(tab, x0, 0.0, h)
        exact = _exact(h, x0)
        ests.append(est[:, 2].abs().max().item())
        lows.append((low - exact)[:, 2].abs().max().item())
    # a local error: h^(p_hat + 1)
    slope = _slope([1 / h for h in hs], ests)
    assert abs(slope - (tab.embedded_order + 1)) < 0.3, (slope, ests)
    # it estimates the embedded solution's true local error ever more closely
    assert math.isclose(ests[-1], lows[-1], rel_tol=0.1), (ests, lows)


def test_a_tableau_in_floats_is_checked_to_the_floats_precision():
    rows, b, c = [[0, 0], [2 / 3, 0]], [1 / 4, 3 / 4], [0, 2 / 3]  # 2/3 rounded to binary
    ralston = schemes.ButcherTableau("my_ralston", rows, b, c, 2)
    assert 0 < ralston.tolerance < 1e-13
    with pytest.raises(ValueError, match="b misses the order-3 condition"):
        schemes.ButcherTableau("my_ralston", rows, b, c, 3)
