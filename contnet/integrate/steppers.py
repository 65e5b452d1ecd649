"""Steppers: how one step of each kind of scheme advances the state.

A stepper advances a state -- a tuple of tensors -- by one step: ``(x,)`` for Runge-Kutta
schemes; ``(x, f_{n-1})`` for Adams-Bashforth 2 and ``(x, x_{n-1})`` for LM-ResNet, whose
second entry is None before the first step. Each owns its stage times (the times at
which its steps evaluate the rate, :meth:`Stepper.times_of`) and its start. The one
stepping loop (:func:`march`), checkpointing and the adjoint all drive steppers. The
stepper of a scheme is chosen by the scheme's type (:func:`stepper_for`).
"""

from __future__ import annotations

import contextlib

import torch

from .. import ops, schemes
from .rk import check_rate, rk_step


class Stepper:
    """One step of a scheme over ``n_steps`` equal steps from ``t0`` to ``t1``."""

    #: whether the step can be taken back (``backprop="adjoint"``)
    reversible = False
    #: per step, None or the factor of the step's update (stochastic depth: 0 where a
    #: sample's update is dropped, ``1 / (1 - p)`` where it is kept), a tensor that
    #: broadcasts against the state; None: every update as the scheme makes it
    factors = None

    def __init__(self, f, scheme, n_steps: int, t0: float, t1: float):
        self.f, self.scheme, self.n_steps = f, scheme, n_steps
        self.h = (t1 - t0) / n_steps
        self.times = self.times_of(scheme, n_steps, t0, t1)

    def factor(self, n: int):
        return None if self.factors is None else self.factors[n]

    def scaled(self, n: int, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        """``x_new`` with step ``n``'s update scaled by its factor, if it has one."""
        s = self.factor(n)
        return x_new if s is None else x + s * (x_new - x)

    @classmethod
    def times_of(cls, scheme, n_steps, t0, t1) -> list[list[float]]:
        """``times[n]``: the times at which step ``n`` evaluates the rate."""
        return schemes.stage_times(scheme, n_steps, t0, t1)

    def start(self, x0) -> tuple:
        return (x0,)

    def step(self, n: int, state: tuple) -> tuple:
        raise NotImplementedError


class RKStepper(Stepper):
    """An explicit Runge-Kutta step (:func:`contnet.integrate.rk.rk_step`)."""

    reversible = True

    def __init__(self, f, scheme, n_steps, t0, t1):
        super().__init__(f, scheme, n_steps, t0, t1)
        self.back_times = schemes.stage_times(scheme, n_steps, t1, t0)

    @classmethod
    def times_of(cls, scheme, n_steps, t0, t1, *, adjoint: bool = False):
        times = schemes.stage_times(scheme, n_steps, t0, t1)
        return times + schemes.stage_times(scheme, n_steps, t1, t0) if adjoint else times

    def step(self, n, state):
        return (
            self.scaled(n, state[0], rk_step(self.f, state[0], self.times[n], self.h, self.scheme)),
        )

    def back(self, n, state):
        """The state before step ``n`` from the state after it: the same scheme stepped
        with ``-h`` over the same interval (exact up to the scheme's local error). A step
        whose update was scaled by ``s`` (stochastic depth) is undone by the back step's
        update scaled by ``s``: exact where ``s = 0`` (a dropped update), to the same order
        otherwise."""
        times = self.back_times[self.n_steps - 1 - n]
        y = state[0]
        return (self.scaled(n, y, rk_step(self.f, y, times, -self.h, self.scheme)),)


class AB2Stepper(Stepper):
    """Adams-Bashforth 2: ``x_{n+1} = x_n + h (3/2 f_n - 1/2 f_{n-1})``; the first step is a
    Heun step (keeps order 2)."""

    HEUN = schemes.get("heun")

    @classmethod
    def times_of(cls, scheme, n_steps, t0, t1):
        first = schemes.stage_times(cls.HEUN, n_steps, t0, t1)[0]
        return [first] + schemes.stage_times(scheme, n_steps, t0, t1)[1:]

    def start(self, x0):
        return (x0, None)

    def step(self, n, state):
        x, f_prev = state
        times, h = self.times[n], self.h
        fn = check_rate(self.f(times[0], x), x, times[0])
        if f_prev is None:
            x1 = ops.combine_unchecked(x, [fn], h, [1.0])
            k2 = check_rate(self.f(times[1], x1), x, times[1])
            return self.scaled(n, x, ops.combine_unchecked(x, [fn, k2], h, list(self.HEUN.b))), fn
        return self.scaled(n, x, ops.combine_unchecked(x, [fn, f_prev], h, [1.5, -0.5])), fn


class LMStepper(Stepper):
    """LM-ResNet (Lu et al. 2018): ``x_{n+1} = (1 - k_n) x_n + k_n x_{n-1} + h f(t_n, x_n)``,
    ``k_n`` learnable; the first step is an Euler step. The update goes through the
    stage-accumulation op with learned coefficients ``(k_n, -k_n, h)`` on
    ``(x_{n-1}, x_n, f_n)``, so ``k`` gets its gradient from the op."""

    def __init__(self, f, scheme, n_steps, t0, t1, lm_k):
        super().__init__(f, scheme, n_steps, t0, t1)
        k = _lm_coefficients(lm_k, n_steps, self.times)
        self.coeffs = torch.stack([k, -k, torch.full_like(k, self.h)], 1)  # (n_steps, 3)

    def start(self, x0):
        return (x0, None)

    def step(self, n, state):
        """With a factor ``eta_n`` (stochastic depth), only the rate term is scaled, as Lu
        et al. drop it: ``(1 - k_n) x_n + k_n x_{n-1} + eta_n h f(t_n, x_n)``."""
        x, x_prev = state
        t = self.times[n][0]
        fn = check_rate(self.f(t, x), x, t)
        if x_prev is None:
            return self.scaled(n, x, ops.combine_unchecked(x, [fn], self.h, [1.0])), x
        out = ops.combine_learned_unchecked(x, [x_prev, x, fn], 1.0, self.coeffs[n])
        eta = self.factor(n)
        return (out if eta is None else out + (eta - 1) * (self.h * fn)), x


def _lm_coefficients(lm_k, n_steps, times):
    if lm_k is None:
        raise ValueError(
            "scheme 'lm' needs lm_k: its learnable k_n, a tensor of n_steps values or a "
            "callable of t (ContinuousBlock(scheme='lm') owns one)"
        )
    if callable(lm_k):
        return torch.stack([torch.as_tensor(lm_k(row[0])).reshape(()) for row in times])
    if not isinstance(lm_k, torch.Tensor) or lm_k.shape != (n_steps,):
        shape = tuple(lm_k.shape) if isinstance(lm_k, torch.Tensor) else type(lm_k).__name__
        raise ValueError(
            f"lm_k must be a tensor of shape ({n_steps},) (one k per step), got {shape}"
        )
    return lm_k


#: the stepper of each kind of scheme
STEPPERS = {
    schemes.ButcherTableau: RKStepper,
    schemes.AdamsBashforth2: AB2Stepper,
    schemes.LMResNet: LMStepper,
}


def stepper_class(scheme) -> type[Stepper]:
    """The stepper class of a scheme (by its type)."""
    for kind in type(scheme).__mro__:
        if kind in STEPPERS:
            return STEPPERS[kind]
    raise TypeError(
        f"scheme must be a Runge-Kutta or multistep scheme, got {type(scheme).__name__}"
    )


def stepper_for(f, scheme, n_steps: int, t0: float, t1: float, lm_k=None) -> Stepper:
    cls = stepper_class(scheme)
    if cls is LMStepper:
        return cls(f, scheme, n_steps, t0, t1, lm_k)
    return cls(f, scheme, n_steps, t0, t1)


def march(stepper: Stepper, state: tuple, *, before=None, around=None) -> tuple:
    """The stepping loop: ``state`` through every step of ``stepper``. ``before(n,
    state)`` is called ahead of step ``n``; ``around(n)`` gives a context the step runs
    in (the random states a recomputed step must see, say)."""
    for n in range(stepper.n_steps):
        if before is not None:
            before(n, state)
        with around(n) if around is not None else contextlib.nullcontext():
            state = stepper.step(n, state)
    return state
