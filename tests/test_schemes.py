import math
from fractions import Fraction

import pytest
import torch

import contnet
from contnet import schemes

RK = ["euler", "midpoint", "heun", "ralston", "rk3", "ssprk3", "rk4", "rk4_38"]


def test_names_cover_design():
    assert schemes.names()[: len(RK)] == RK
    assert {"ab2", "lm"} <= set(schemes.names())


@pytest.mark.parametrize("name", RK)
def test_tableau_is_consistent(name):
    tab = schemes.get(name)
    s = tab.stages
    assert len(tab.a) == len(tab.c) == len(tab.b) == s
    for i in range(s):
        assert sum(tab.exact_a[i]) == tab.exact_c[i]
        assert all(tab.exact_a[i][j] == 0 for j in range(i, s))
    assert sum(tab.exact_b) == 1
    assert tab.order >= 1 and tab.a[0] == (0.0,) * s


def test_tableau_validation_rejects_bad_tables():
    F = Fraction
    with pytest.raises(ValueError, match="row 1 of A sums"):
        schemes.ButcherTableau("bad", ((0, 0), (F(1, 3), 0)), (F(1, 2), F(1, 2)), (0, F(1, 2)), 2)
    with pytest.raises(ValueError, match="weights b sum"):
        schemes.ButcherTableau("bad", ((0, 0), (1, 0)), (F(1, 2), F(1, 3)), (0, 1), 2)
    with pytest.raises(ValueError, match="strictly lower"):
        schemes.ButcherTableau("bad", ((1,),), (1,), (1,), 1)
    with pytest.raises(ValueError, match=r"A must be 2x2"):
        schemes.ButcherTableau("bad", ((0,),), (F(1, 2), F(1, 2)), (0, 1), 2)


def test_get_errors():
    with pytest.raises(ValueError, match="unknown scheme 'rk5'"):
        schemes.get("rk5")
    with pytest.raises(TypeError, match="scheme must be"):
        schemes.get(4)


def _initial(n=5):
    """Random initial states: x_0 in (0.5, 1.5), x_1 and x_2 in (0.1, 0.5)."""
    return torch.stack(
        [torch.rand(n) + 0.5, torch.rand(n) * 0.4 + 0.1, torch.rand(n) * 0.4 + 0.1], 1
    ).double()


def _exact(t, x0):
    # dx/dt = (-2 t (x_0 - 1/2),  x_1^2 cos t,  x_2^2): x_0 = 1/2 + (x0_0 - 1/2) e^{-t^2},
    # x_1 = 1 / (1/x0_1 - sin t), x_2 = x0_2 / (1 - x0_2 t)
    a = 0.5 + (x0[:, 0] - 0.5) * math.exp(-(t**2))
    b = 1.0 / (1.0 / x0[:, 1] - math.sin(t))
    c = x0[:, 2] / (1.0 - x0[:, 2] * t)
    return torch.stack([a, b, c], 1)


def _rate(t, x):
    return torch.stack([-2.0 * t * (x[:, 0] - 0.5), x[:, 1] ** 2 * math.cos(t), x[:, 2] ** 2], 1)


def _slope(steps, errs):
    lh = torch.log(torch.tensor([1.0 / n for n in steps], dtype=torch.float64))
    le = torch.log(torch.tensor(errs, dtype=torch.float64))
    return (((lh - lh.mean()) * (le - le.mean())).sum() / ((lh - lh.mean()) ** 2).sum()).item()


def _fitted_order(scheme, steps=(16, 32, 64, 128)):
    """Fitted slopes of the error at t = 1 against the step: of the largest error over all
    components, and of the x_2' = x_2^2 component alone. Every elementary differential of
    x^2 is a positive multiple of a power of x, so that component's leading error term
    keeps its sign along the solution and its global error cannot cancel to a higher
    order. The other components' can: ralston's order-2 term nearly vanishes on x_0, whose
    error then falls at order 3 and, for some draws, dominates the largest error."""
    x0 = _initial()
    ref = _exact(1.0, x0)
    errs = [(contnet.odeint(_rate, x0, scheme=scheme, n_steps=n) - ref).abs() for n in steps]
    worst = _slope(steps, [e.max().item() for e in errs])
    quadratic = _slope(steps, [e[:, 2].max().item() for e in errs])
    return worst, quadratic, [e.max().item() for e in errs]


@pytest.mark.parametrize("name", RK + ["ab2"])
def test_empirical_order_of_convergence(name):
    worst, quadratic, errs = _fitted_order(name)
    order = schemes.get(name).order
    assert abs(quadratic - order) < 0.3, (quadratic, errs)
    assert worst > order - 0.3, (worst, errs)  # no component converges slower


def test_stage_times_open_interval_rule():
    times = schemes.stage_times("rk4", 4)
    for n, row in enumerate(times):
        assert row[0] == n / 4 and row[1] == row[2] == (n + 0.5) / 4
        assert row[3] < (n + 1) / 4 and row[3] == math.nextafter((n + 1) / 4, 0.0)
    # a piecewise-constant basis with n_steps a multiple of K: every step sees one cell
    for K, n_steps in ((3, 3), (3, 6), (5, 10), (7, 7)):
        b = contnet.basis.get("piecewise_constant", K)
        for scheme in RK:
            for n, row in enumerate(schemes.stage_times(scheme, n_steps)):
                cells = {b.coefficients(t)[0][0] for t in row}
                assert cells == {n * K // n_steps}, (K, n_steps, scheme, n, row)


def test_stage_times_general_interval_and_reverse():
    # backwards, a step over [0.5, 1) starts just below 1 and ends exactly at 0.5
    times = schemes.stage_times("heun", 2, 1.0, 0.0)
    assert times[0] == [math.nextafter(1.0, 0.0), 0.5] and times[1] == [
        math.nextafter(0.5, 0.0),
        0.0,
    ]
    # so it reads the same cells of a piecewise-constant basis as the forward step
    # for every K, not only powers of two (whose edges k / K are exact in binary): the
    # backward grid is the forward one, (N - m) / N, not 1 - m / N rounded twice
    for K in (3, 4, 5, 6, 7, 9, 10, 11, 12):
        b = contnet.basis.get("piecewise_constant", K)
        for N in (K, 2 * K, 3 * K):
            assert schemes.step_times(N, 1.0, 0.0) == schemes.step_times(N)[::-1]
            for scheme in RK:
                fwd = schemes.stage_times(scheme, N)
                bwd = schemes.stage_times(scheme, N, 1.0, 0.0)
                for n in range(N):
                    cells = {b.coefficients(t)[0][0] for t in fwd[n] + bwd[N - 1 - n]}
                    assert cells == {n * K // N}, (K, N, scheme, n)
    assert schemes.step_times(4, 0.0, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0]


@pytest.mark.parametrize("bad", [0, -3])
def test_n_steps_must_be_positive(bad):
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        schemes.stage_times("euler", bad)
    with pytest.raises(TypeError, match="n_steps must be an int"):
        schemes.stage_times("euler", 2.0)
