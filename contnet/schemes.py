"""Time-stepping schemes: explicit Runge-Kutta tableaux and linear multistep methods.

Pure data and arithmetic; nothing here knows about ``nn.Module``. Tableau entries are
held as exact fractions so that validation is exact and stage times land exactly on
basis cell edges when they should (see :func:`stage_times`).

A step of an explicit Runge-Kutta scheme with tableau ``(A, b, c)`` and step ``h`` is::

    k_i     = f(t_n + c_i h, x_n + h sum_{j<i} a_ij k_j)
    x_{n+1} = x_n + h sum_i b_i k_i

Open-interval rule: a step covers ``[t_n, t_{n+1})``. A stage with ``c_i = 1`` is
evaluated at the largest float strictly inside the step (``math.nextafter(t_{n+1}, t_n)``),
so a rate that is piecewise in time (a ``piecewise_constant`` weight basis, say) reads the
piece of the step it belongs to, not the next one. Steps taken backwards in time read the
same pieces as the forward step over their interval (see :func:`stage_times`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from fractions import Fraction

import torch

__all__ = [
    "ButcherTableau",
    "Multistep",
    "AdamsBashforth2",
    "LMResNet",
    "get",
    "names",
    "name_of",
    "stage_times",
    "step_times",
    "check_n_steps",
    "check_interval",
    "fitted_order",
]


def _frac(v) -> Fraction:
    return v if isinstance(v, Fraction) else Fraction(v)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta scheme.

    Attributes: ``name``; ``a`` (strictly lower triangular, ``stages x stages``), ``b``,
    ``c`` as tuples of floats; ``order`` (declared order of convergence); ``stages``.
    ``exact_a``, ``exact_b``, ``exact_c`` hold the same entries as ``Fraction``.
    The constructor checks that ``A`` is strictly lower triangular, that each row of ``A``
    sums to its ``c_i`` and that the weights ``b`` sum to one.
    """

    name: str
    exact_a: tuple[tuple[Fraction, ...], ...]
    exact_b: tuple[Fraction, ...]
    exact_c: tuple[Fraction, ...]
    order: int
    description: str = ""
    a: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    b: tuple[float, ...] = field(init=False, repr=False, compare=False)
    c: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        s = len(self.exact_b)
        a = tuple(tuple(_frac(v) for v in row) for row in self.exact_a)
        b = tuple(_frac(v) for v in self.exact_b)
        c = tuple(_frac(v) for v in self.exact_c)
        if s == 0:
            raise ValueError(f"tableau {self.name!r}: b must have at least one weight")
        if len(c) != s or len(a) != s or any(len(row) != s for row in a):
            raise ValueError(
                f"tableau {self.name!r}: A must be {s}x{s} and c of length {s} to match b"
            )
        for i, row in enumerate(a):
            if any(row[j] != 0 for j in range(i, s)):
                raise ValueError(
                    f"tableau {self.name!r}: A must be strictly lower triangular (explicit), "
                    f"row {i} has entries on or above the diagonal"
                )
            if sum(row) != c[i]:
                raise ValueError(
                    f"tableau {self.name!r}: row {i} of A sums to {sum(row)}, expected c_{i} = {c[i]}"
                )
        if sum(b) != 1:
            raise ValueError(f"tableau {self.name!r}: weights b sum to {sum(b)}, expected 1")
        if not (isinstance(self.order, int) and self.order >= 1):
            raise ValueError(f"tableau {self.name!r}: order must be a positive int")
        object.__setattr__(self, "exact_a", a)
        object.__setattr__(self, "exact_b", b)
        object.__setattr__(self, "exact_c", c)
        object.__setattr__(self, "a", tuple(tuple(float(v) for v in row) for row in a))
        object.__setattr__(self, "b", tuple(float(v) for v in b))
        object.__setattr__(self, "c", tuple(float(v) for v in c))
        # c_i as (numerator, denominator): stage times in integer arithmetic (traceable)
        object.__setattr__(self, "_c_ratios", tuple((v.numerator, v.denominator) for v in c))

    @property
    def stages(self) -> int:
        """Number of rate evaluations per step."""
        return len(self.b)

    @property
    def multistep(self) -> bool:
        return False


@dataclass(frozen=True)
class Multistep:
    """A linear multistep scheme (one rate evaluation per step, reuses past states/rates).
    Its kind is its type: :class:`AdamsBashforth2` or :class:`LMResNet`."""

    name: str
    order: int
    description: str = ""

    @property
    def stages(self) -> int:
        return 1

    @property
    def c(self) -> tuple[float, ...]:
        return (0.0,)

    @property
    def multistep(self) -> bool:
        return True


@dataclass(frozen=True)
class AdamsBashforth2(Multistep):
    """Adams-Bashforth 2, order 2: ``x_{n+1} = x_n + h (3/2 f_n - 1/2 f_{n-1})``, started
    by one Heun step."""


@dataclass(frozen=True)
class LMResNet(Multistep):
    """LM-ResNet (Lu et al. 2018), order 1: ``x_{n+1} = (1 - k_n) x_n + k_n x_{n-1} + h f_n``
    with a learnable ``k(t)``, started by one Euler step. A block integrating with it owns
    its ``k(t)``."""


def _tab(name, a, b, c, order, description):
    return ButcherTableau(
        name,
        tuple(tuple(Fraction(v) for v in row) for row in a),
        tuple(Fraction(v) for v in b),
        tuple(Fraction(v) for v in c),
        order,
        description,
    )


_F = Fraction
_SCHEMES = {
    s.name: s
    for s in (
        _tab("euler", [[0]], [1], [0], 1, "forward Euler: order 1, 1 stage"),
        _tab(
            "midpoint",
            [[0, 0], [_F(1, 2), 0]],
            [0, 1],
            [0, _F(1, 2)],
            2,
            "explicit midpoint: order 2, 2 stages",
        ),
        _tab(
            "heun",
            [[0, 0], [1, 0]],
            [_F(1, 2), _F(1, 2)],
            [0, 1],
            2,
            "Heun (explicit trapezoid): order 2, 2 stages, second stage at the step's end",
        ),
        _tab(
            "ralston",
            [[0, 0], [_F(2, 3), 0]],
            [_F(1, 4), _F(3, 4)],
            [0, _F(2, 3)],
            2,
            "Ralston: order 2, 2 stages, minimal truncation error bound",
        ),
        _tab(
            "rk3",
            [[0, 0, 0], [_F(1, 2), 0, 0], [-1, 2, 0]],
            [_F(1, 6), _F(2, 3), _F(1, 6)],
            [0, _F(1, 2), 1],
            3,
            "Kutta's third-order method: order 3, 3 stages",
        ),
        _tab(
            "ssprk3",
            [[0, 0, 0], [1, 0, 0], [_F(1, 4), _F(1, 4), 0]],
            [_F(1, 6), _F(1, 6), _F(2, 3)],
            [0, 1, _F(1, 2)],
            3,
            "strong-stability-preserving RK3 (Shu-Osher): order 3, 3 stages",
        ),
        _tab(
            "rk4",
            [[0, 0, 0, 0], [_F(1, 2), 0, 0, 0], [0, _F(1, 2), 0, 0], [0, 0, 1, 0]],
            [_F(1, 6), _F(1, 3), _F(1, 3), _F(1, 6)],
            [0, _F(1, 2), _F(1, 2), 1],
            4,
            "classic Runge-Kutta: order 4, 4 stages",
        ),
        _tab(
            "rk4_38",
            [[0, 0, 0, 0], [_F(1, 3), 0, 0, 0], [_F(-1, 3), 1, 0, 0], [1, -1, 1, 0]],
            [_F(1, 8), _F(3, 8), _F(3, 8), _F(1, 8)],
            [0, _F(1, 3), _F(2, 3), 1],
            4,
            "Kutta's 3/8 rule: order 4, 4 stages",
        ),
    )
}
_SCHEMES["ab2"] = AdamsBashforth2("ab2", 2, "Adams-Bashforth 2: order 2, 1 rate per step")
_SCHEMES["lm"] = LMResNet("lm", 1, "LM-ResNet linear two-step scheme with learnable k(t)")


def names() -> list[str]:
    """Names of every available scheme, Runge-Kutta first, then multistep."""
    return list(_SCHEMES)


def get(name) -> ButcherTableau | Multistep:
    """The scheme called ``name`` (a ``ButcherTableau`` or ``Multistep``).

    A ``ButcherTableau`` or ``Multistep`` instance is passed through, so user-defined
    tableaux work wherever a scheme name does.
    """
    if isinstance(name, (ButcherTableau, Multistep)):
        return name
    if not isinstance(name, str):
        raise TypeError(f"scheme must be a str or ButcherTableau, got {type(name).__name__}")
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; expected one of {names()}") from None


def name_of(scheme) -> str:
    """The name of ``scheme`` (a name, passed through, or a scheme object)."""
    return scheme if isinstance(scheme, str) else get(scheme).name


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
