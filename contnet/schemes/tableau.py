"""The kinds of scheme: explicit Runge-Kutta tableaux (with an optional embedded pair) and
linear multistep methods, and the order conditions a tableau is checked against.

A step of an explicit Runge-Kutta scheme with tableau ``(A, b, c)`` and step ``h`` is::

    k_i     = f(t_n + c_i h, x_n + h sum_{j<i} a_ij k_j)
    x_{n+1} = x_n + h sum_i b_i k_i

An embedded pair adds weights ``bhat`` of a lower order; ``h sum_i (b_i - bhat_i) k_i``
estimates the error of the step. ``bhat`` may have one weight more than ``b``: a stage at
the step's end whose row of ``A`` is ``b`` (first-same-as-last), the rate at ``x_{n+1}``,
which a step that lands where the rate is continuous hands on as the next step's first.
As a fixed-step scheme the pair is its higher-order solution: the stages of ``b`` alone.

Order conditions are Butcher's: for every rooted tree ``tau`` with at most ``p`` nodes,
``sum_i b_i Phi_i(tau) = 1 / gamma(tau)``, with ``Phi(leaf) = 1`` and
``Phi([tau_1, ..., tau_m]) = prod_k A Phi(tau_k)`` (elementwise), ``gamma`` the tree's
density. They are checked in exact fractions, so a rational tableau is verified exactly; a
tableau published in decimals is verified to the digits given (``tolerance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache

__all__ = [
    "ButcherTableau",
    "Multistep",
    "AdamsBashforth2",
    "LMResNet",
    "rooted_trees",
    "order_residuals",
]


def _frac(v) -> Fraction:
    return v if isinstance(v, Fraction) else Fraction(v)


# ---------------------------------------------------------------------- order conditions
@cache
def rooted_trees(n: int) -> tuple:
    """The rooted trees with ``n`` nodes, each a sorted tuple of its subtrees (a leaf is
    ``()``): 1, 1, 2, 4, 9, 20 trees for ``n`` = 1 ... 6."""
    if n == 1:
        return ((),)
    return tuple(sorted(set(_forests(n - 1, n - 1))))


def _forests(n: int, largest: int):
    """Sorted tuples of trees with ``n`` nodes in all, no tree above ``largest`` nodes."""
    if n == 0:
        yield ()
        return
    for size in range(min(n, largest), 0, -1):
        for tree in rooted_trees(size):
            for rest in _forests(n - size, size):
                yield tuple(sorted((tree, *rest)))


def _nodes(tree) -> int:
    return 1 + sum(_nodes(t) for t in tree)


def _density(tree) -> int:
    g = _nodes(tree)
    for t in tree:
        g *= _density(t)
    return g


def _phi(tree, a) -> tuple:
    s = len(a)
    out = [Fraction(1)] * s
    for sub in tree:
        p = _phi(sub, a)
        ap = [sum(a[i][j] * p[j] for j in range(i)) for i in range(s)]
        out = [o * v for o, v in zip(out, ap)]
    return tuple(out)


def order_residuals(a, b, order: int) -> list[tuple[tuple, Fraction]]:
    """``(tree, sum_i b_i Phi_i(tree) - 1 / gamma(tree))`` for every tree of at most
    ``order`` nodes, in exact fractions (``a`` square, ``b`` of its size)."""
    out = []
    for n in range(1, order + 1):
        for tree in rooted_trees(n):
            val = sum(bi * p for bi, p in zip(b, _phi(tree, a)))
            out.append((tree, val - Fraction(1, _density(tree))))
    return out


def _check_order(name, what, a, b, order, tolerance) -> None:
    for tree, r in order_residuals(a, b, order):
        if abs(r) > tolerance:
            raise ValueError(
                f"tableau {name!r}: {what} misses the order-{_nodes(tree)} condition of tree "
                f"{tree} by {float(r):.3g}; it is not of order {order}"
            )


# ---------------------------------------------------------------------- Runge-Kutta
@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta scheme, optionally an embedded pair.

    Attributes: ``name``; ``a`` (strictly lower triangular, ``stages x stages``), ``b``,
    ``c`` as tuples of floats; ``order`` (of ``b``); ``stages``. ``exact_a``, ``exact_b``,
    ``exact_c`` hold the same entries as ``Fraction``. A pair also has ``exact_bhat`` (of
    ``stages`` or, first-same-as-last, ``stages + 1`` weights) and ``embedded_order``;
    ``error_weights`` are ``b - bhat`` as floats (over ``stages + 1`` entries when
    ``fsal``).

    The constructor checks that ``A`` is strictly lower triangular, that each row of ``A``
    sums to its ``c_i``, that the weights sum to one, and the order conditions of ``b`` up
    to ``order`` and of ``bhat`` up to ``embedded_order``, in exact fractions, to within
    ``tolerance``: by default zero for a tableau of ints and fractions and a few units in
    the last place of float64 for one given in floats; a tableau published in decimals
    states its digits.
    """

    name: str
    exact_a: tuple[tuple[Fraction, ...], ...]
    exact_b: tuple[Fraction, ...]
    exact_c: tuple[Fraction, ...]
    order: int
    description: str = ""
    exact_bhat: tuple[Fraction, ...] | None = None
    embedded_order: int | None = None
    tolerance: Fraction | None = None
    a: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    b: tuple[float, ...] = field(init=False, repr=False, compare=False)
    c: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        s = len(self.exact_b)
        a = tuple(tuple(_frac(v) for v in row) for row in self.exact_a)
        b = tuple(_frac(v) for v in self.exact_b)
        c = tuple(_frac(v) for v in self.exact_c)
        name = self.name
        if s == 0:
            raise ValueError(f"tableau {name!r}: b must have at least one weight")
        if len(c) != s or len(a) != s or any(len(row) != s for row in a):
            raise ValueError(f"tableau {name!r}: A must be {s}x{s} and c of length {s} to match b")
        for i, row in enumerate(a):
            if any(row[j] != 0 for j in range(i, s)):
                raise ValueError(
                    f"tableau {name!r}: A must be strictly lower triangular (explicit), "
                    f"row {i} has entries on or above the diagonal"
                )
            if sum(row) != c[i]:
                raise ValueError(
                    f"tableau {name!r}: row {i} of A sums to {sum(row)}, expected c_{i} = {c[i]}"
                )
        if sum(b) != 1:
            raise ValueError(f"tableau {name!r}: weights b sum to {sum(b)}, expected 1")
        if not (isinstance(self.order, int) and self.order >= 1):
            raise ValueError(f"tableau {name!r}: order must be a positive int")
        tol = self._tolerance()
        _check_order(name, "b", a, b, self.order, tol)
        bhat = self._check_pair(a, b, tol)
        object.__setattr__(self, "exact_a", a)
        object.__setattr__(self, "exact_b", b)
        object.__setattr__(self, "exact_c", c)
        object.__setattr__(self, "exact_bhat", bhat)
        object.__setattr__(self, "a", tuple(tuple(float(v) for v in row) for row in a))
        object.__setattr__(self, "b", tuple(float(v) for v in b))
        object.__setattr__(self, "c", tuple(float(v) for v in c))
        # c_i as (numerator, denominator): stage times in integer arithmetic (traceable)
        object.__setattr__(self, "_c_ratios", tuple((v.numerator, v.denominator) for v in c))

    def _tolerance(self) -> Fraction:
        """Zero for a tableau of exact numbers (ints, fractions); a few units in the last
        place of float64 for one given in floats, whose entries are the nearest binary
        fractions of the intended ones (``2 / 3``); else as given."""
        if self.tolerance is not None:
            tol = _frac(self.tolerance)
            object.__setattr__(self, "tolerance", tol)
            return tol
        given = [*(v for row in self.exact_a for v in row), *self.exact_b, *self.exact_c]
        given += list(self.exact_bhat or ())
        tol = Fraction(1, 2**45) if any(isinstance(v, float) for v in given) else Fraction(0)
        object.__setattr__(self, "tolerance", tol)
        return tol

    def _check_pair(self, a, b, tol):
        name, s = self.name, len(b)
        if self.exact_bhat is None:
            if self.embedded_order is not None:
                raise ValueError(f"tableau {name!r}: embedded_order given without bhat")
            return None
        bhat = tuple(_frac(v) for v in self.exact_bhat)
        if len(bhat) not in (s, s + 1):
            raise ValueError(
                f"tableau {name!r}: bhat must have {s} weights (or {s + 1}, the last for the "
                f"rate at the step's end), got {len(bhat)}"
            )
        if sum(bhat) != 1:
            raise ValueError(f"tableau {name!r}: weights bhat sum to {sum(bhat)}, expected 1")
        eo = self.embedded_order
        if not (isinstance(eo, int) and 1 <= eo < self.order):
            raise ValueError(
                f"tableau {name!r}: embedded_order must be an int in [1, {self.order - 1}], "
                f"got {eo!r}"
            )
        if len(bhat) == s + 1:  # the first-same-as-last stage: row b, at the step's end
            a = tuple(row + (Fraction(0),) for row in a) + (b + (Fraction(0),),)
        _check_order(name, "bhat", a, bhat, eo, tol)
        return bhat

    @property
    def stages(self) -> int:
        """Number of rate evaluations per step (of the solution ``b``)."""
        return len(self.b)

    @property
    def multistep(self) -> bool:
        return False

    @property
    def embedded(self) -> bool:
        """Whether the tableau carries an error estimate (an embedded pair)."""
        return self.exact_bhat is not None

    @property
    def fsal(self) -> bool:
        """Whether the error estimate uses the rate at the step's end (first-same-as-last)."""
        return self.embedded and len(self.exact_bhat) == self.stages + 1

    @property
    def error_weights(self) -> tuple[float, ...]:
        """``b_i - bhat_i``: the step's error estimate is ``h sum_i e_i k_i``."""
        if not self.embedded:
            raise ValueError(f"scheme {self.name!r} has no embedded error estimate")
        b = self.exact_b + (Fraction(0),) * (len(self.exact_bhat) - self.stages)
        return tuple(float(x - y) for x, y in zip(b, self.exact_bhat))


# ---------------------------------------------------------------------- multistep
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

    @property
    def embedded(self) -> bool:
        return False


@dataclass(frozen=True)
class AdamsBashforth2(Multistep):
    """Adams-Bashforth 2, order 2: ``x_{n+1} = x_n + h (3/2 f_n - 1/2 f_{n-1})``, started
    by one Heun step."""


@dataclass(frozen=True)
class LMResNet(Multistep):
    """LM-ResNet (Lu et al. 2018), order 1: ``x_{n+1} = (1 - k_n) x_n + k_n x_{n-1} + h f_n``
    with a learnable ``k(t)``, started by one Euler step. A block integrating with it owns
    its ``k(t)``."""
