"""Step and stage times of fixed steps, and the checks of a step count and an interval.

Open-interval rule: a step covers ``[t_n, t_{n+1})``. A stage with ``c_i = 1`` is
evaluated at the largest float strictly inside the step (``math.nextafter(t_{n+1}, t_n)``),
so a rate that is piecewise in time (a ``piecewise_constant`` weight basis, say) reads the
piece of the step it belongs to, not the next one. Steps taken backwards in time read the
same pieces as the forward step over their interval (see :func:`stage_times`). Times on
``[0, 1]`` are correctly rounded rationals, so stage times land exactly on basis cell edges
when they should.
"""

from __future__ import annotations

import math
import numbers

import torch

from .catalog import get
from .tableau import ButcherTableau

__all__ = [
    "stage_times",
    "step_times",
    "check_n_steps",
    "check_interval",
    "fitted_order",
]


def check_n_steps(n_steps) -> int:
    """Validate a step count (a positive int) and return it."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return n_steps


def check_interval(t0, t1) -> tuple[float, float]:
    """Validate an integration interval (finite real numbers, ``t0 != t1``) and return it
    as floats."""
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    return float(t0), float(t1)


def _time(t0: float, t1: float, num: int, den: int) -> float:
    # On [0, 1] the time is the correctly rounded rational num/den (Python's int / int is
    # correctly rounded), so equal rationals give identical floats: stage times meet basis
    # cell edges k/K exactly. Integers only, so that torch.compile traces it to constants.
    if t0 == 0.0 and t1 == 1.0:
        return num / den
    if t0 == 1.0 and t1 == 0.0:  # backwards over [0, 1]: the same grid, (den - num) / den
        return (den - num) / den
    return t0 + (t1 - t0) * (num / den)


def step_times(n_steps: int, t0: float = 0.0, t1: float = 1.0) -> list[float]:
    """The ``n_steps + 1`` step boundaries ``t_0 < ... < t_N`` (or descending if t1 < t0)."""
    n_steps = check_n_steps(n_steps)
    t0, t1 = check_interval(t0, t1)
    return [_time(t0, t1, n, n_steps) for n in range(n_steps + 1)]


_STAGE_TIMES: dict = {}


def stage_times(scheme, n_steps: int, t0: float = 0.0, t1: float = 1.0) -> list[list[float]]:
    """``times[n][i]``: the time at which stage ``i`` of step ``n`` evaluates the rate.

    ``t_n + c_i h``, except at the step's upper end in forward time, which is read from
    inside the step (the open-interval rule: a step covers ``[lo, hi)``): for ``t1 > t0``
    the stage with ``c_i = 1`` gets ``math.nextafter(t_{n+1}, t_n)``; integrating backwards
    (``t1 < t0``), the stage with ``c_i = 0`` gets ``math.nextafter(t_n, t_{n+1})``, so a step
    taken backwards reads the same pieces of a piecewise rate as the forward step over the
    same interval. Computed in exact fractions once per (scheme, n_steps, t0, t1) and
    cached (do not modify the result).
    """
    sch = get(scheme)
    n_steps = check_n_steps(n_steps)
    t0, t1 = check_interval(t0, t1)
    if torch.compiler.is_compiling():  # traced once into constants; no cache needed
        return _stage_times(sch, n_steps, t0, t1)
    key = (id(sch), n_steps, t0, t1)
    hit = _STAGE_TIMES.get(key)
    if hit is not None and hit[0] is sch:
        return hit[1]
    out = _stage_times(sch, n_steps, t0, t1)
    if len(_STAGE_TIMES) > 256:
        _STAGE_TIMES.clear()
    _STAGE_TIMES[key] = (sch, out)
    return out


def _stage_times(sch, n_steps, t0, t1):
    cs = sch._c_ratios if isinstance(sch, ButcherTableau) else ((0, 1),)
    out = []
    for n in range(n_steps):
        ta, tb = _time(t0, t1, n, n_steps), _time(t0, t1, n + 1, n_steps)
        lo, hi = min(ta, tb), max(ta, tb)
        row = []
        for p, q in cs:  # c = p / q; the stage at (n + c) / n_steps
            t = _time(t0, t1, n * q + p, n_steps * q)
            if t == hi and p in (0, q):  # the step's upper end in forward time: from inside
                t = math.nextafter(hi, lo)
            row.append(t)
        out.append(row)
    return out


def fitted_order(steps, errors) -> float:
    """Least-squares slope of ``log error`` against ``log h`` (``h = 1/steps``); NaN when
    fewer than two positive errors."""
    pts = [(math.log(1.0 / n), math.log(e)) for n, e in zip(steps, errors) if e > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
