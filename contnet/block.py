"""``ContinuousBlock``: a residual stage as the flow of ``dx/dt = R(t, x)`` on ``[0, 1]``."""

from __future__ import annotations

from torch import nn

from . import schemes
from .integrate import BACKPROP_MODES, odeint

__all__ = ["ContinuousBlock"]


class ContinuousBlock(nn.Module):
    """Integrates a rate module ``unit(t, x)`` from ``t = 0`` to ``1``.

    ``scheme`` (name or tableau), ``n_steps`` and ``backprop`` are plain attributes that
    may be changed at any time: the weights describe ``theta(t)``, not a particular
    discretisation (manifestation invariance). ``n_steps=None`` takes one step per basis
    node, ``unit.n_basis`` (with a ``piecewise_constant`` basis: one step per cell, the
    ResNet-like manifestation).

    Example::

        unit = contnet.ConvUnit(16, n_basis=4, norm="batch")
        block = contnet.ContinuousBlock(unit, scheme="rk4")   # 4 steps of rk4
        y = block(x)
        block.scheme, block.n_steps = "euler", 16             # another manifestation
    """

    def __init__(
        self, unit: nn.Module, *, scheme="rk4", n_steps: int | None = None, backprop="direct"
    ):
        super().__init__()
        if not callable(unit):
            raise TypeError(f"unit must be callable as unit(t, x), got {type(unit).__name__}")
        self.unit = unit
        self.scheme = scheme
        if n_steps is None:
            n_basis = getattr(unit, "n_basis", None)
            if n_basis is None:
                raise ValueError(
                    "n_steps is required when the unit has no n_basis attribute to take it from"
                )
            n_steps = n_basis
        self.n_steps = n_steps
        self.backprop = backprop

    @property
    def scheme(self):
        return self._scheme

    @scheme.setter
    def scheme(self, value):
        sch = schemes.get(value)
        self._scheme = value if isinstance(value, str) else sch

    @property
    def n_steps(self) -> int:
        return self._n_steps

    @n_steps.setter
    def n_steps(self, value: int):
        self._n_steps = schemes.check_n_steps(value)

    @property
    def backprop(self) -> str:
        return self._backprop

    @backprop.setter
    def backprop(self, value: str):
        if value not in BACKPROP_MODES:
            raise ValueError(f"unknown backprop {value!r}; expected one of {list(BACKPROP_MODES)}")
        self._backprop = value

    def forward(self, x):
        return odeint(
            self.unit, x, scheme=self.scheme, n_steps=self.n_steps, backprop=self.backprop
        )

    def extra_repr(self) -> str:
        name = self.scheme if isinstance(self.scheme, str) else self.scheme.name
        return f"scheme={name}, n_steps={self.n_steps}, backprop={self.backprop}"
