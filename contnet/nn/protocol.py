"""The Unit protocol: the one contract between a :class:`contnet.ContinuousBlock` and what
it integrates.

A unit is a module called as ``unit(t, x, weights=None)`` that returns the rate
``R(t, x)``, a tensor of ``x``'s shape. ``t`` is a Python float in ``[0, 1]``; ``weights``
are the unit's basis tensors already interpolated at ``t`` (as :meth:`basis_tensors`
groups them), or None for the unit to look them up itself.

A unit declares the basis its weights are expanded in (``basis``, ``n_basis``) and the
tensors expanded in it (``basis_tensors``), which the block interpolates for every stage
time of a forward pass at once. It may offer ``split(t, x, weights)`` when its tail is
``scale * act(y + bias)``, so that the integrator fuses that tail with the stage update;
``fusable`` says whether calling ``split`` in place of the unit computes the same now (no
hooks on the unit, no subclass's own forward).

The integrator sees only a rate ``f(t, x)`` and its optional ``split``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .. import basis as basis_lib

__all__ = ["Unit", "SplitUnit", "PassSplitUnit", "conforms"]


@runtime_checkable
class Unit(Protocol):
    """What a block needs of a unit (see the module docstring)."""

    @property
    def basis(self) -> basis_lib.Basis:
        """The basis the unit's weights are expanded in."""

    @property
    def n_basis(self) -> int:
        """``basis.n_basis``."""

    def basis_tensors(self) -> dict[str, list[torch.Tensor]]:
        """``{name: [node stacks]}``: the tensors expanded in :attr:`basis`, grouped as
        the unit reads them back from ``weights``."""

    def __call__(self, t: float, x: torch.Tensor, weights: dict | None = None) -> torch.Tensor:
        """The rate ``R(t, x)``."""


@runtime_checkable
class SplitUnit(Unit, Protocol):
    """A unit whose tail ``scale * act(y + bias)`` the integrator may fuse."""

    @property
    def fusable(self) -> bool:
        """Whether :meth:`split` stands for calling the unit now."""

    def split(self, t: float, x: torch.Tensor, weights: dict | None = None) -> tuple:
        """``(y, bias, act, scale)`` with ``R(t, x) = scale * act(y + bias[channel])``;
        ``act`` a name of :data:`contnet.ops.ACT_CODES`, ``bias`` None or one value per
        channel (dim 1)."""


@runtime_checkable
class PassSplitUnit(SplitUnit, Protocol):
    """A split unit that prepares its split once per forward pass (binding its weights
    and settings once, to save host time at every stage)."""

    def stage_split(self, table: dict, x: torch.Tensor):
        """``split`` as a function ``(t, x)`` for one forward pass from ``x``, reading
        stage ``t``'s weights from ``table`` (``{t: weights}``)."""


_CONFORMS: dict = {}


def conforms(unit, protocol) -> bool:
    """``isinstance(unit, protocol)``, decided once per class (a protocol check looks up
    every member: too slow for every forward pass)."""
    key = (type(unit), protocol)
    hit = _CONFORMS.get(key)
    if hit is None:
        hit = _CONFORMS[key] = isinstance(unit, protocol)
    return hit
