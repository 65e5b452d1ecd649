"""Adaptive steps in odeint: the controller meets the tolerance on ODEs with known
solutions, steps land on jump times and never cross one, the gradient is that of fixed
steps on the recorded grid, and every misuse is refused by name."""

import math

import pytest
import torch

import contnet
from contnet.integrate import Controller
from contnet.integrate.adaptive import GridStepper
from contnet.integrate.rk import rk_step

PAIRS = ["heun_euler", "bosh3", "dopri5", "tsit5"]


def _linear(t, x):
    return 2 * math.cos(3 * t) * x


def _linear_exact(x0, t=1.0):
    return x0 * math.exp(2 * math.sin(3 * t) / 3)


X0 = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)


@pytest.mark.parametrize("name", ["bosh3", "dopri5", "tsit5"])
@pytest.mark.parametrize("controller", [Controller(), Controller.integral()], ids=["pi", "i"])
def test_the_global_error_falls_with_the_tolerance(name, controller):
    errs, evals = [], []
    for rtol in (1e-3, 1e-5, 1e-7):
        stats = {}
        y = contnet.odeint(_linear, X0, scheme=name, rtol=rtol, atol=rtol / 100,
                           controller=controller, stats=stats)  # fmt: skip
        errs.append((y - _linear_exact(X0)).abs().max().item())
        evals.append(stats["evaluations"])
        assert errs[-1] < 100 * rtol  # of the order of the tolerance
        assert stats["accepted"] == len(stats["steps"]) and stats["steps"][-1][1] == 1.0
    assert errs[0] > errs[1] > errs[2] and evals[0] < evals[1] < evals[2], (errs, evals)


def test_a_nonlinear_ode_and_backwards_in_time():
    x0 = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)  # x' = x^2: x0 / (1 - x0 t)
    y = contnet.odeint(lambda t, x: x * x, x0, scheme="tsit5", rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y, x0 / (1 - x0), rtol=1e-6, atol=0)
    back = contnet.odeint(_linear, _linear_exact(X0), scheme="dopri5", t0=1.0, t1=0.0,
                          rtol=1e-8, atol=1e-10)  # fmt: skip
    torch.testing.assert_close(back, X0, rtol=1e-6, atol=0)


def _cells(t, K=4):
    return min(int(t * K), K - 1)


def _piecewise(K=4, seed=0):
    """x' = a_k x + s_k on cell k of K: a rate that jumps at k/K, with the times it was
    called at."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(K, generator=g, dtype=torch.float64)
    s = torch.randn(K, generator=g, dtype=torch.float64)
    calls = []

    def rate(t, x):
        calls.append(t)
        k = _cells(t, K)
        return a[k] * x + s[k]

    def exact(x0):
        x = x0
        for k in range(K):  # x(t) on a cell: (x + s/a) e^{a dt} - s/a
            x = (x + s[k] / a[k]) * math.exp(a[k].item() / K) - s[k] / a[k]
        return x

    return rate, exact, calls


@pytest.mark.parametrize("name", PAIRS)
def test_steps_land_on_jumps_and_never_cross_one(name):
    rate, exact, calls = _piecewise()
    jumps = [0.25, 0.5, 0.75]
    stats = {}
    y = contnet.odeint(rate, X0, scheme=name, rtol=1e-6, atol=1e-8, jump_t=jumps, stats=stats)
    ends = {tn for _, tn, _ in stats["steps"]}
    assert set(jumps) <= ends
    for t, tn, _ in stats["steps"]:
        assert not any(t < j < tn for j in jumps)
    torch.testing.assert_close(y, exact(X0), rtol=1e-4, atol=0)
    tab = contnet.schemes.get(name)
    if tab.fsal:  # the last rate is not handed on across a jump: read again after it
        tries = stats["accepted"] + stats["rejected"]
        assert stats["evaluations"] == 2 + tab.stages * tries + len(jumps)
    # the open-interval rule: the rate was never read in a cell its step does not cover
    for t in calls:
        step = [s for s in stats["steps"] if s[0] <= t < s[1] or s[0] == t]
        assert all(_cells(t) == _cells(s[0]) for s in step), t
    # and without them, steps straddle jumps and are rejected many times more
    off = {}
    contnet.odeint(rate, X0, scheme=name, rtol=1e-6, atol=1e-8, jump_t=jumps, stats=off,
                   controller=Controller(jumps=False))  # fmt: skip
    if name in ("dopri5", "tsit5"):
        assert off["rejected"] >= 4 * max(stats["rejected"], 1), (off, stats)


def test_a_kink_is_landed_on_and_the_last_rate_handed_on():
    calls = []

    def rate(t, x):  # continuous, its slope in t jumps at 0.5
        calls.append(t)
        return abs(t - 0.5) * x

    stats = {}
    contnet.odeint(rate, X0, scheme="dopri5", rtol=1e-6, kink_t=[0.5], stats=stats)
    assert 0.5 in {tn for _, tn, _ in stats["steps"]}
    # first-same-as-last: 6 evaluations an accepted step, 2 for the first step's choice
    # and the first rate, 6 a rejected one
    assert stats["evaluations"] == 2 + 6 * (stats["accepted"] + stats["rejected"])
    assert 0.5 in calls  # read at the kink itself: the rate is continuous there


def _grid_by_hand(f, x0, grid, tab):
    x = x0
    for t, tn, h in grid:
        x = rk_step(f, x, GridStepper(f, tab, [(t, tn, h)]).times[0], h, tab)
    return x


@pytest.mark.parametrize("backprop", ["direct", "checkpoint", "adjoint"])
def test_the_gradient_is_that_of_fixed_steps_on_the_recorded_grid(backprop):
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def f(t, x):
        return torch.tanh(x @ w.T) * math.cos(2 * t)

    stats = {}
    y = contnet.odeint(f, x0, scheme="dopri5", rtol=1e-5, backprop=backprop, params=[w],
                       stats=stats)  # fmt: skip
    with torch.no_grad():  # one pass without gradients: the same arithmetic
        assert torch.equal(y, contnet.odeint(f, x0, scheme="dopri5", rtol=1e-5))
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x0, w], gy)
    tab = contnet.schemes.get("dopri5")
    ref = _grid_by_hand(f, x0, stats["steps"], tab)
    assert torch.equal(ref, y)
    want = torch.autograd.grad(ref, [x0, w], gy)
    for g, r in zip(got, want):
        if backprop == "adjoint":  # reconstructs the states: approximate
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(g, r, rtol=1e-12, atol=0)


def test_the_step_limits_name_themselves():
    blow = lambda t, x: x * x  # noqa: E731  x0 = 2 blows up at t = 1/2
    with pytest.raises(RuntimeError, match=r"max_steps=5 reached at t=0\.\d+ of \[0\.0, 1\.0\]"):
        contnet.odeint(_linear, X0, scheme="bosh3", rtol=1e-9, controller=Controller(max_steps=5))
    with pytest.raises(RuntimeError, match=r"min_step=0.1 fails the tolerance at t="):
        contnet.odeint(_linear, X0, scheme="dopri5", rtol=1e-9,
                       controller=Controller(min_step=0.1))  # fmt: skip
    with pytest.raises(RuntimeError, match="the solution may blow up or not be finite"):
        contnet.odeint(blow, torch.full((2,), 2.0, dtype=torch.float64), scheme="dopri5",
                       rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(rtol=-1e-3), ValueError, "rtol must be a finite number > 0, got -0.001"),
        (dict(rtol=float("nan")), ValueError, "rtol must be a finite number > 0"),
        (dict(rtol="1e-3"), TypeError, "rtol must be a real number, got str"),
        (dict(rtol=1e-3, atol=-1.0), ValueError, "atol must be a finite number >= 0"),
        (dict(atol=1e-3), ValueError, "atol needs rtol"),
        (dict(rtol=1e-3, scheme="rk4"), ValueError, "scheme 'rk4' has no embedded error"),
        (dict(rtol=1e-3, scheme="ab2"), ValueError, "scheme 'ab2' is multistep"),
        (dict(rtol=1e-3, n_steps=4), ValueError, "n_steps=4 and rtol=0.001: fixed steps or"),
        (dict(rtol=1e-3, trajectory=True), ValueError, "trajectory=True needs fixed steps"),
        (dict(jump_t=[0.5]), ValueError, "options of adaptive steps: set rtol"),
        (dict(rtol=1e-3, jump_t=["a"]), TypeError, "jump_t must be a sequence of real"),
        (dict(rtol=1e-3, kink_t=[math.inf]), ValueError, "kink_t must be finite"),
        (dict(rtol=1e-3, controller="pi"), TypeError, "controller must be a Controller"),
    ],
)
def test_misuse_is_refused_by_name(kwargs, error, message):
    kwargs.setdefault("scheme", "dopri5")
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        contnet.odeint(_linear, X0, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(safety=1.5), r"safety must be in \(0, 1\]"),
        (dict(ifactor=1.0), "ifactor must be > 1"),
        (dict(dfactor=0.0), r"dfactor must be in \(0, 1\)"),
        (dict(beta1=0.0), "beta1 must be > 0"),
        (dict(max_steps=0), "max_steps must be >= 1"),
        (dict(max_steps=2.5), "max_steps must be an int"),
        (dict(min_step=-1.0), "min_step must be >= 0"),
        (dict(first_step=0.0), "first_step must be > 0 or None"),
        (dict(jumps=1), "jumps must be a bool"),
        (dict(safety=math.nan), "safety must be a finite real number"),
    ],
)
def test_controller_options_are_checked(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Controller(**kwargs)


def test_the_integral_controller_takes_torchdiffeqs_steps():
    """With torchdiffeq's embedded weights (Shampine's) contnet's integral controller takes
    exactly torchdiffeq's steps: the same rate evaluations, the same solution to rounding."""
    pytest.importorskip("torchdiffeq")
    from contnet.bench.adaptive_bench import peer

    for row in peer(rtols=(1e-3, 1e-6, 1e-8)):
        mine = row["contnet_shampine_weights"]
        assert mine["evaluations"] == row["torchdiffeq"]["evaluations"], row
        assert mine["vs_torchdiffeq"] < 1e-9


def test_half_precision_zero_and_empty_states_and_non_finite_ones():
    # the error norm in at least float32: a float16 state's 1/scale^2 overflowed
    for dtype in (torch.float16, torch.bfloat16):
        y = contnet.odeint(lambda t, x: -2 * x, torch.ones(3, dtype=dtype), scheme="dopri5",
                           rtol=1e-3)  # fmt: skip
        assert y.dtype == dtype and abs(y[0].item() - math.exp(-2)) < 5e-3
    # a zero solution with atol = 0: zero error over zero scale counts as zero
    zero = contnet.odeint(lambda t, x: -x, torch.zeros(3), scheme="dopri5", rtol=1e-6, atol=0.0)
    assert torch.equal(zero, torch.zeros(3))
    # nothing to integrate
    for per_sample in (False, True):
        with torch.no_grad():
            out = contnet.odeint(lambda t, x: -x, torch.ones(0, 3), scheme="dopri5", rtol=1e-6,
                                 per_sample=per_sample)  # fmt: skip
        assert out.shape == (0, 3)
    # a state that is not finite cannot meet a tolerance: refused, naming the samples
    x = torch.ones(4, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x0 has 1 non-finite value\(s\)"):
        contnet.odeint(lambda t, x: -x, x, scheme="dopri5", rtol=1e-6)
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match=r"non-finite values in sample\(s\) \[2\]"),
    ):
        contnet.odeint(lambda t, x: -x, x, scheme="dopri5", rtol=1e-6, per_sample=True)


def test_fixed_steps_fill_stats_too():
    stats = {}
    contnet.odeint(_linear, X0, scheme="ab2", n_steps=4, stats=stats)
    assert stats == {"evaluations": 5, "accepted": 4, "rejected": 0}
    contnet.odeint(_linear, X0, scheme="dopri5", n_steps=3, stats=stats)
    assert stats == {"evaluations": 18, "accepted": 3, "rejected": 0}


def test_the_controllers_factor_for_one_step_and_per_sample_agree():
    import numpy as np

    rng = np.random.default_rng(0)
    ratio = np.concatenate([rng.lognormal(0, 3, 200), [0.0, 1.0, np.inf, np.nan, 1e-300, 1e300]])
    previous = rng.uniform(1e-4, 1.0, ratio.size)
    for ctrl in (
        Controller(),
        Controller.integral(),
        Controller(safety=0.8, ifactor=5, dfactor=0.1),
    ):
        many = ctrl.factors(ratio, previous, 5)
        one = [ctrl.factor(float(r), float(p), 5) for r, p in zip(ratio, previous)]
        assert many.tolist() == one
        assert ((many >= ctrl.dfactor) & (many <= ctrl.ifactor)).all()
        assert many[ratio.size - 6] == ctrl.ifactor and many[-3] == many[-4] == ctrl.dfactor
        assert (many[ratio < 1] >= 1).all() and (many[ratio > 1] <= 1).all()
