"""The rate a block integrates with fixed steps: its unit reading every stage's weights
from a table built up front."""

from __future__ import annotations

from ..nn import PassSplitUnit, SplitUnit, Unit, conforms

__all__ = ["StageRate"]


class StageRate:
    """A unit as the rate of one forward pass from ``x``, reading its weights from a table
    of every stage time (``{t: {"conv1": (W, b), ...}}``, or ``{t: (W, b)}`` for a layer),
    and passing ``kwargs`` to every call. Keeps the unit's fusable tail."""

    def __init__(self, unit: Unit, table, x, kwargs=None):
        self.unit, self.table, self.kwargs = unit, table, kwargs or {}
        self.fusable = conforms(unit, SplitUnit) and unit.fusable
        # split(t, x) -> (y, bias, act, scale), the unit's tail apart (see integrate.rk)
        self.split = None
        kw = self.kwargs
        if self.fusable and conforms(unit, PassSplitUnit):
            self.split = unit.stage_split(table, x, **kw)
        elif self.fusable:
            self.split = lambda t, x: unit.split(t, x, weights=table[t], **kw)

    def __call__(self, t, x):
        if self.kwargs:
            return self.unit(t, x, weights=self.table[t], **self.kwargs)
        return self.unit(t, x, weights=self.table[t])

    def tensors(self) -> list:
        """Every distinct tensor of the table (the weights the rate reads)."""
        seen = {}
        for entry in self.table.values():
            for ws in entry.values() if isinstance(entry, dict) else (entry,):
                for w in ws:
                    if w is not None:
                        seen[id(w)] = w
        return list(seen.values())
