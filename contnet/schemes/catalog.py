"""The named schemes: the fixed-step Runge-Kutta tableaux, the embedded pairs, the
multistep methods; looked up by name.

The pairs (``heun_euler`` 2(1), ``bosh3`` 3(2), ``dopri5`` 5(4), ``tsit5`` 5(4)) are
registered by their higher-order solution: as a fixed-step scheme each is that solution,
its stages those of ``b`` (``dopri5`` takes 6 rate evaluations a step, not 7); the
first-same-as-last stage enters only the error estimate. Rational tableaux are exact;
``tsit5`` is published in decimals (Tsitouras 2011, Table 1): its first column and
first weights are the ones the row sums and the weights' sum fix, as in its construction,
and its order conditions hold to the digits given.
"""

from __future__ import annotations

from fractions import Fraction

from .tableau import AdamsBashforth2, ButcherTableau, LMResNet, Multistep

__all__ = ["get", "names", "name_of", "PAIRS"]


def _tab(name, a, b, c, order, description, bhat=None, embedded_order=None, tolerance=0):
    return ButcherTableau(
        name,
        tuple(tuple(Fraction(v) for v in row) for row in a),
        tuple(Fraction(v) for v in b),
        tuple(Fraction(v) for v in c),
        order,
        description,
        None if bhat is None else tuple(Fraction(v) for v in bhat),
        embedded_order,
        Fraction(tolerance),
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


def _square(rows, s):
    return [list(r) + [0] * (s - len(r)) for r in rows]


def _dopri5():
    a = _square(
        [
            [],
            [_F(1, 5)],
            [_F(3, 40), _F(9, 40)],
            [_F(44, 45), _F(-56, 15), _F(32, 9)],
            [_F(19372, 6561), _F(-25360, 2187), _F(64448, 6561), _F(-212, 729)],
            [_F(9017, 3168), _F(-355, 33), _F(46732, 5247), _F(49, 176), _F(-5103, 18656)],
        ],
        6,
    )
    b = [_F(35, 384), 0, _F(500, 1113), _F(125, 192), _F(-2187, 6784), _F(11, 84)]
    bhat = [_F(5179, 57600), 0, _F(7571, 16695), _F(393, 640), _F(-92097, 339200),
            _F(187, 2100), _F(1, 40)]  # fmt: skip
    c = [0, _F(1, 5), _F(3, 10), _F(4, 5), _F(8, 9), 1]
    return _tab("dopri5", a, b, c, 5, "Dormand-Prince 5(4): 6 stages, error estimate "
                "from the rate at the step's end (first-same-as-last)", bhat, 4)  # fmt: skip


def _tsit5():
    d = Fraction  # a decimal string, exactly
    c = [0, d("0.161"), d("0.327"), d("0.9"), d("0.9800255409045097"), 1]
    tail = [  # a_ij for j >= 2; a_i1 = c_i - sum_j a_ij
        [],
        [],
        ["0.335480655492357"],
        ["-6.359448489975075", "4.3622954328695815"],
        ["-11.748883564062828", "7.4955393428898365", "-0.09249506636175525"],
        ["-12.92096931784711", "8.159367898576159", "-0.071584973281401",
         "-0.028269050394068383"],
    ]  # fmt: skip
    a = _square([[c[i] - sum(map(d, r)), *map(d, r)] if i else [] for i, r in enumerate(tail)], 6)
    b = [d(v) for v in ("0.01", "0.4798896504144996", "1.379008574103742",
                        "-3.290069515436081", "2.324710524099774")]  # fmt: skip
    b = [1 - sum(b), *b]
    e = [d(v) for v in ("-0.0008164344596567469", "0.007880878010261995", "-0.1447110071732629",
                        "0.5823571654525552", "-0.45808210592918697")] + [_F(1, 66)]  # fmt: skip
    bhat = [bi - ei for bi, ei in zip(b[1:] + [0], e)]  # b - e, e = b - bhat as published
    bhat = [1 - sum(bhat), *bhat]
    return _tab("tsit5", a, b, c, 5, "Tsitouras 5(4): 6 stages, error estimate from the rate "
                "at the step's end (first-same-as-last)", bhat, 4, _F(1, 10**15))  # fmt: skip


#: the embedded pairs, by name
PAIRS = {
    p.name: p
    for p in (
        _tab(
            "heun_euler",
            [[0, 0], [1, 0]],
            [_F(1, 2), _F(1, 2)],
            [0, 1],
            2,
            "Heun with Euler embedded: 2(1), 2 stages",
            [1, 0],
            1,
        ),
        _tab(
            "bosh3",
            _square([[], [_F(1, 2)], [0, _F(3, 4)]], 3),
            [_F(2, 9), _F(1, 3), _F(4, 9)],
            [0, _F(1, 2), _F(3, 4)],
            3,
            "Bogacki-Shampine 3(2): 3 stages, error estimate "
            "from the rate at the step's end (first-same-as-last)",
            [_F(7, 24), _F(1, 4), _F(1, 3), _F(1, 8)],
            2,
        ),
        _dopri5(),
        _tsit5(),
    )
}
_SCHEMES.update(PAIRS)
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
