"""A block's manifestation settings: its scheme and step count or tolerance, how it
backpropagates, its per-sample mode and controller, its stochastic depth; each checked when
set, the scheme and tolerance changed together by :meth:`Manifestation.manifest`."""

from __future__ import annotations

from .. import schemes
from ..integrate import BACKPROP_MODES, adaptive
from .stochastic_depth import StochasticDepth


class Manifestation:
    """The settable settings of :class:`contnet.ContinuousBlock` (a mixin)."""

    def manifest(self, scheme, n_steps: int, rtol=None, atol=None) -> None:
        """Run with ``scheme`` and ``n_steps`` (fixed steps; the tolerance cleared), or, with
        ``rtol`` (and ``atol``), with the embedded pair ``scheme`` to that tolerance
        (``n_steps`` kept for when it is cleared): the scheme and the tolerance change
        together, every value checked before any changes."""
        sch = schemes.get(scheme)
        schemes.check_n_steps(n_steps)
        if rtol is not None:
            adaptive.pair_of(sch)
            adaptive.check_tolerances(rtol, atol)
        elif atol is not None:
            raise ValueError(f"atol={atol} without rtol: give rtol for adaptive steps")
        self._rtol = None
        self.scheme, self.n_steps = scheme, n_steps
        self.rtol, self.atol = rtol, atol

    def manifestation(self) -> tuple:
        """``(scheme, n_steps, rtol, atol)``: what :meth:`manifest` takes, to restore it."""
        return self.scheme, self.n_steps, self.rtol, self.atol

    @property
    def scheme(self):
        return self._scheme

    @scheme.setter
    def scheme(self, value):
        sch = schemes.get(value)
        if getattr(self, "_rtol", None) is not None and not getattr(sch, "embedded", False):
            raise ValueError(
                f"block.rtol is {self._rtol}: adaptive steps need an embedded pair as scheme "
                f"({', '.join(schemes.PAIRS)}), got {sch.name!r}; for fixed steps clear the "
                "tolerance first (block.rtol = None), or use block.manifest(scheme, n_steps)"
            )
        if isinstance(sch, schemes.LMResNet) and getattr(self, "lm", None) is None:
            raise ValueError(
                "scheme 'lm' has a learnable k(t): build the block with scheme='lm' so that it owns one"
            )
        self._scheme = value if isinstance(value, str) else sch

    @property
    def n_steps(self) -> int:
        return self._n_steps

    @n_steps.setter
    def n_steps(self, value: int):
        self._n_steps = schemes.check_n_steps(value)

    @property
    def rtol(self) -> float | None:
        return self._rtol

    @rtol.setter
    def rtol(self, value):
        self._rtol = None if value is None else adaptive.check_tolerances(value, None)[0]

    @property
    def atol(self) -> float | None:
        """``atol`` as set (None: ``rtol``'s value)."""
        return self._atol

    @atol.setter
    def atol(self, value):
        self._atol = None if value is None else adaptive.check_tolerances(1.0, value)[1]

    @property
    def per_sample(self) -> bool:
        return self._per_sample

    @per_sample.setter
    def per_sample(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"per_sample must be a bool, got {value!r}")
        self._per_sample = value

    @property
    def controller(self):
        return self._controller

    @controller.setter
    def controller(self, value):
        if value is not None and not isinstance(value, adaptive.Controller):
            raise TypeError(f"controller must be a Controller or None, got {type(value).__name__}")
        self._controller = value

    @property
    def backprop(self) -> str:
        return self._backprop

    @backprop.setter
    def backprop(self, value: str):
        if value not in BACKPROP_MODES:
            raise ValueError(f"unknown backprop {value!r}; expected one of {list(BACKPROP_MODES)}")
        self._backprop = value

    @property
    def stochastic_depth(self) -> StochasticDepth:
        return self._stochastic_depth

    @stochastic_depth.setter
    def stochastic_depth(self, value):
        """A :class:`StochasticDepth`, or a probability (the mode and schedule kept)."""
        if not isinstance(value, StochasticDepth):
            old = getattr(self, "_stochastic_depth", StochasticDepth())
            schedule = "linear" if old.schedule == "cells" else old.schedule
            value = StochasticDepth(value, old.mode, schedule)
        self._stochastic_depth = value
