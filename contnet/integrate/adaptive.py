"""Adaptive steps: integrate to a tolerance with an embedded pair, steps chosen by a PI
controller, landing on the rate's jump and kink times.

The controller runs without gradients and records the accepted steps; a pass that needs
gradients differentiates the steps on that grid like fixed steps (:class:`GridStepper`
through the backprop modes of :mod:`contnet.integrate.backprop`).

A step from ``t`` with size ``h`` (``t_next = t + h``, or a jump or kink time it was
shortened to land on, or ``t1``) takes the pair's stages as :func:`contnet.integrate.rk.rk_step`
does, at ``t + c_i h``, with the open-interval rule: a stage at the step's upper end in
forward time reads the float just inside the step. Its error estimate is
``err = h sum_i (b_i - bhat_i) k_i``, with, for a first-same-as-last pair, the rate at
``x_next`` as the last ``k`` (evaluated at ``t_next``, and handed on as the next step's first
stage, unless the step ends on a jump, where the rate is evaluated again just after it).
Its size is the root mean square, over every element, of
``err / (atol + rtol max(|x|, |x_next|))`` (torchdiffeq's norm): the step is accepted when it
is at most 1. The stages run as fixed steps run them (a rate that splits fuses its tail
into the stage updates, keeping the rates the estimate reads), and the new state, the error
and its mean square per sample come from one pass of :func:`contnet.ops.rk_step_error`
(the error is never written out). One host read per step (that number).
"""

from __future__ import annotations

import bisect
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops, schemes
from .rk import check_rate, embedded_step, rk_step
from .steppers import RKStepper

__all__ = ["Controller", "GridStepper", "check_tolerances", "solve"]


@dataclass(frozen=True)
class Controller:
    """How the step size is chosen. With the error size ``r_n`` of step ``n`` (accepted at
    ``r_n <= 1``) and ``q = embedded_order + 1``, the next step is ``h`` times
    ``safety * r_n^(-beta1 / q) * r_(n-1)^(beta2 / q)`` (``r_(n-1)``: the last accepted
    step's), clipped to ``[dfactor, ifactor]``; an accepted step never shrinks the next
    and a rejected one never grows it, and a zero error grows it by ``ifactor``.

    - the default is a PI controller with ``beta1 = 0.85, beta2 = 0.2`` (Hairer and
      Wanner's DOPRI5 exponents, 0.17 and 0.04 for ``q = 5``);
      :meth:`integral` (``beta1 = 1, beta2 = 0``) is torchdiffeq's controller for its
      adaptive Runge-Kutta solvers;
    - ``first_step``: the first step's size; None chooses it by Hairer's rule (two rate
      evaluations: at ``t0`` and one trial point; the first is the first step's first
      stage);
    - ``max_steps``: accepted and rejected steps at most, then a ``RuntimeError`` naming
      it and the time reached;
    - ``min_step``: no step is shorter (except one that lands on ``t1``, a jump or a kink);
      a step of that size that fails the tolerance raises a ``RuntimeError`` naming it;
    - ``jumps``: whether steps land on the rate's jump and kink times (off, for measuring
      what they save).
    """

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    beta1: float = 0.85
    beta2: float = 0.2
    first_step: float | None = None
    max_steps: int = 10_000
    min_step: float = 0.0
    jumps: bool = True

    @classmethod
    def integral(cls, **kw) -> Controller:
        """The integral controller (``beta1 = 1, beta2 = 0``): torchdiffeq's."""
        return cls(beta1=1.0, beta2=0.0, **kw)

    def __post_init__(self):
        for name in ("safety", "ifactor", "dfactor", "beta1", "beta2", "min_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise TypeError(f"Controller.{name} must be a finite real number, got {v!r}")
        if not 0 < self.safety <= 1:
            raise ValueError(f"Controller.safety must be in (0, 1], got {self.safety}")
        if not self.ifactor > 1:
            raise ValueError(f"Controller.ifactor must be > 1, got {self.ifactor}")
        if not 0 < self.dfactor < 1:
            raise ValueError(f"Controller.dfactor must be in (0, 1), got {self.dfactor}")
        if self.beta1 <= 0 or self.beta2 < 0:
            raise ValueError(
                f"Controller.beta1 must be > 0 and beta2 >= 0, got {self.beta1}, {self.beta2}"
            )
        if self.min_step < 0:
            raise ValueError(f"Controller.min_step must be >= 0, got {self.min_step}")
        if self.first_step is not None and not (
            isinstance(self.first_step, numbers.Real)
            and not isinstance(self.first_step, bool)
            and math.isfinite(self.first_step)
            and self.first_step > 0
        ):
            raise ValueError(f"Controller.first_step must be > 0 or None, got {self.first_step!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise TypeError(f"Controller.max_steps must be an int, got {self.max_steps!r}")
        if self.max_steps < 1:
            raise ValueError(f"Controller.max_steps must be >= 1, got {self.max_steps}")
        if not isinstance(self.jumps, bool):
            raise TypeError(f"Controller.jumps must be a bool, got {self.jumps!r}")

    def factor(self, ratio: float, previous: float, q: int) -> float:
        """The next step over this one, from this step's error size and the last accepted
        one's."""
        return float(self.factors(np.asarray(ratio, dtype=np.float64), np.asarray(previous), q))

    def factors(self, ratio: np.ndarray, previous: np.ndarray, q: int) -> np.ndarray:
        """:meth:`factor` for arrays of steps (one per sample)."""
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            f = self.safety * ratio ** (-self.beta1 / q) * previous ** (self.beta2 / q)
        f = np.minimum(self.ifactor, np.maximum(np.where(ratio < 1.0, 1.0, self.dfactor), f))
        f = np.where(ratio == 0.0, self.ifactor, f)
        return np.where(np.isfinite(ratio), f, self.dfactor)


def check_tolerances(rtol, atol) -> tuple[float, float]:
    """``rtol`` (> 0) and ``atol`` (>= 0; default ``rtol``) as floats."""
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
        raise TypeError(f"rtol must be a real number, got {type(rtol).__name__}")
    if not (math.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be a finite number > 0, got {rtol}")
    if atol is None:
        return float(rtol), float(rtol)
    if isinstance(atol, bool) or not isinstance(atol, numbers.Real):
        raise TypeError(f"atol must be a real number, got {type(atol).__name__}")
    if not (math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0, got {atol}")
    return float(rtol), float(atol)


def stage_time(c: float, t, t_next, h):
    """``t + c h`` in the step's half-open interval (the open-interval rule: the upper end
    in forward time is read from just inside), for floats or arrays of samples."""
    lo, hi = np.minimum(t, t_next), np.maximum(t, t_next)
    s = t + c * h
    return np.where(s >= hi, np.nextafter(hi, lo), np.maximum(s, lo))


def _stage_times(c, t: float, t_next: float, h: float) -> list[float]:
    return stage_time(np.asarray(c, dtype=np.float64), t, t_next, h).tolist()


def scaled(v, scale, dims=None) -> torch.Tensor:
    """The root mean square of ``v / scale`` (over every element, or ``dims``), in at least
    float32: a half-precision tolerance's ``1 / scale**2`` overflows float16. A zero
    ``v`` over a zero ``scale`` (a zero state with ``atol = 0``) counts as zero."""
    wide = torch.promote_types(v.dtype, torch.float32)
    v, scale = v.to(wide), scale.to(wide)
    r = torch.where(v == 0, torch.zeros((), dtype=wide, device=v.device), v / scale)
    r = r.pow(2)
    return (r.mean() if dims is None else r.flatten(1).mean(1)).sqrt()


def error_norm(x, x_next, ks, h: float, tab, rtol: float, atol: float):
    """``(x_next, sq)`` of :func:`contnet.ops.rk_step_error` for a step's rates ``ks`` (None
    where the error weight is zero): the new state (computed here when ``x_next`` is None)
    and each sample's mean squared scaled error, in one pass."""
    e = tab.error_weights
    if x_next is None:  # a pair that is not first-same-as-last: one weight of each per stage
        return ops.error_unchecked(x, ks, h, tab.b, e, rtol, atol)
    used = [(k, w) for k, w in zip(ks, e) if w != 0.0]
    return ops.error_unchecked(
        x, [k for k, _ in used], h, None, [w for _, w in used], rtol, atol, x_next
    )


def _norm(v, scale) -> float:
    return scaled(v, scale).item()


def check_finite_start(x0, per_sample: bool = False) -> None:
    """A tolerance cannot be met on a state that is not finite: refuse it at the start,
    naming the samples (along dim 0) in per-sample mode."""
    bad = ~torch.isfinite(x0)
    if per_sample:
        rows = bad.flatten(1).any(1).nonzero().flatten().tolist() if x0.numel() else []
        if rows:
            raise ValueError(
                f"x0 has non-finite values in sample(s) {rows[:10]}: no step of theirs can "
                "meet a tolerance; drop them, or use fixed steps (n_steps)"
            )
    elif bad.any():
        raise ValueError(
            f"x0 has {int(bad.sum())} non-finite value(s): no step can meet a tolerance on "
            "them; use fixed steps (n_steps), which carry them through"
        )


def trial_step(d0, d1):
    """Hairer's rule (Hairer, Norsett & Wanner, II.4), first half: the trial step whose
    first-order estimate is 1% of the scale, from the sizes ``d0`` of the state and ``d1``
    of its rate (floats or arrays of samples)."""
    small = (d0 < 1e-5) | (d1 < 1e-5)
    return np.where(small, 1e-6, 0.01 * d0 / np.where(small, 1.0, d1))


def first_step(h0, d1, d2, q: int):
    """Hairer's rule, second half: the first step from the trial step ``h0`` and the size
    ``d2`` of the rate's change over it per unit time."""
    big = np.maximum(d1, d2)
    h1 = np.where(
        big <= 1e-15, np.maximum(1e-6, h0 * 1e-3), (0.01 / np.maximum(big, 1e-300)) ** (1.0 / q)
    )
    return np.minimum(100 * h0, h1)


def _initial_step(f, x, k0, t, direction, q, rtol, atol) -> tuple[float, int]:
    """Hairer's rule over the whole state: a trial step, checked against the rate's change
    over it (one evaluation)."""
    scale = x.abs().mul(rtol).add(atol)
    d0, d1 = _norm(x, scale), _norm(k0, scale)
    h0 = float(trial_step(d0, d1))
    x1 = ops.combine_unchecked(x, [k0], direction * h0, [1.0])
    k1 = check_rate(f(t + direction * h0, x1), x, t + direction * h0)
    d2 = _norm(k1 - k0, scale) / h0
    return float(first_step(h0, d1, d2, q)), 1


def _events(jump_t, kink_t, t0, t1) -> tuple[list[float], set[float]]:
    """The jump and kink times strictly inside the interval, in the order a step meets
    them, and the set of jumps."""
    lo, hi = min(t0, t1), max(t0, t1)
    jumps = {float(t) for t in jump_t if lo < t < hi}
    every = sorted(jumps | {float(t) for t in kink_t if lo < t < hi}, reverse=t1 < t0)
    return every, jumps


def solve(f, x0, tab, t0, t1, rtol, atol, controller: Controller, jump_t=(), kink_t=()):
    """Integrate to the tolerance without gradients. Returns the final state, the accepted
    steps ``[(t, t_next, h), ...]`` and ``{"evaluations", "accepted", "rejected"}``."""
    ctrl, direction = controller, (1.0 if t1 > t0 else -1.0)
    q = tab.embedded_order + 1
    events, jumps = _events(jump_t, kink_t, t0, t1) if ctrl.jumps else ([], set())
    stats = {"evaluations": 0, "accepted": 0, "rejected": 0}
    steps: list[tuple[float, float, float]] = []
    if x0.numel() == 0:  # nothing to integrate
        return x0.clone(), [], stats
    check_finite_start(x0)
    with torch.no_grad():
        t, x = t0, x0
        k_first = _first_rate(f, x, t, t1, stats)
        if ctrl.first_step is not None:
            h = float(ctrl.first_step)
        else:
            h, n = _initial_step(f, x, k_first, t, direction, q, rtol, atol)
            stats["evaluations"] += n
        previous = 1.0
        while t != t1:
            if stats["accepted"] + stats["rejected"] >= ctrl.max_steps:
                raise RuntimeError(
                    f"max_steps={ctrl.max_steps} reached at t={t!r} of [{t0}, {t1}] "
                    f"(rtol={rtol}, atol={atol}): raise Controller.max_steps or the tolerances"
                )
            h = max(h, ctrl.min_step)
            if not math.isfinite(h):
                raise RuntimeError(
                    f"the step size is not finite at t={t!r}: the state or the rate is not "
                    "finite there"
                )
            t_next, landed = _next_stop(t, direction * h, t1, events, direction)
            hs = t_next - t if landed else direction * h
            if t + hs == t:
                raise RuntimeError(
                    f"the step size fell to {abs(hs):.3g} at t={t!r}, below what float64 time "
                    "resolves: the solution may blow up or not be finite there"
                )
            t_end = math.nextafter(t_next, t) if t_next in jumps else t_next
            x_next, ks = embedded_step(f, x, _stage_times(tab.c, t, t_next, hs), hs, tab,
                                       first=k_first, t_end=t_end)  # fmt: skip
            stats["evaluations"] += tab.stages - (k_first is not None) + tab.fsal
            k_first = ks[0]  # a rejected step is retried from the same state and time
            x_next, sq = error_norm(x, x_next, ks, hs, tab, rtol, atol)
            ratio = sq.mean().sqrt().item()  # the host read
            accepted = ratio <= 1.0
            if not accepted and abs(hs) <= ctrl.min_step:
                raise RuntimeError(
                    f"a step of min_step={ctrl.min_step} fails the tolerance at t={t!r} "
                    f"(error size {ratio:.3g}): lower Controller.min_step or loosen rtol/atol"
                )
            if accepted:
                steps.append((t, t_next, hs))
                stats["accepted"] += 1
                t, x = t_next, x_next
                # the rate at the step's end is the next step's first stage where the rate
                # is continuous there and the next step starts at that very time
                reuse = tab.fsal and direction > 0 and t_next not in jumps
                k_first = ks[-1] if reuse else None
                factor = ctrl.factor(ratio, previous, q)
                previous = max(ratio, 1e-4)  # floored: a near-zero error does not stall growth
            else:
                stats["rejected"] += 1
                factor = ctrl.factor(ratio, previous, q)
            # a step shortened to land on an event does not shrink the next one: the
            # controller's proposal stands where the shorter step met the tolerance
            h = max(abs(hs) * factor, h) if accepted and landed else abs(hs) * factor
    return x, steps, stats


def _first_rate(f, x, t, t1, stats) -> torch.Tensor:
    """The rate at a step's first stage: at ``t``, or just inside the step when
    integrating backwards (the open-interval rule)."""
    ts = t if t1 > t else math.nextafter(t, t1)
    stats["evaluations"] += 1
    return check_rate(f(ts, x), x, ts)


def _next_stop(t, hd, t1, events, direction) -> tuple[float, bool]:
    """Where a step of signed size ``hd`` from ``t`` ends: ``t1``, the next jump or kink
    time, or ``t + hd``; and whether it was shortened to land there."""
    target = t + hd
    if events:
        if direction > 0:
            i = bisect.bisect_right(events, t)
            nxt = events[i] if i < len(events) else None
            if nxt is not None and target >= nxt:
                return nxt, True
        else:
            later = [s for s in events if s < t]
            if later and target <= later[0]:
                return later[0], True
    if (target - t1) * direction >= 0:
        return t1, True
    return target, False


class GridStepper(RKStepper):
    """The steps of a recorded grid ``[(t, t_next, h), ...]`` (an adaptive solve's accepted
    steps) as fixed steps of ``tab``: the same stage times and sizes, so a pass with
    gradients repeats the solve's arithmetic, and the backprop modes drive it like any
    stepper (``back`` steps each interval with ``-h``)."""

    def __init__(self, f, scheme, grid):
        self.f, self.scheme, self.n_steps = f, scheme, len(grid)
        self.grid = grid
        self.times = [_stage_times(scheme.c, t, tn, h) for t, tn, h in grid]
        self.back_times = [_stage_times(scheme.c, tn, t, -h) for t, tn, h in grid]

    def step(self, n, state):
        return (rk_step(self.f, state[0], self.times[n], self.grid[n][2], self.scheme),)

    def back(self, n, state):
        return (rk_step(self.f, state[0], self.back_times[n], -self.grid[n][2], self.scheme),)


def pair_of(scheme) -> schemes.ButcherTableau:
    """The embedded pair ``scheme`` names, or a ``ValueError`` saying what adaptive steps
    need."""
    sch = schemes.get(scheme)
    if getattr(sch, "embedded", False):
        return sch
    kind = "is multistep" if sch.multistep else "has no embedded error estimate"
    raise ValueError(
        f"rtol needs an embedded pair as scheme ({', '.join(schemes.PAIRS)}); scheme "
        f"{sch.name!r} {kind}"
    )
