"""Stochastic depth for a block's steps (Huang et al. 2016; in the continuous reading of
LM-ResNet, Lu et al. 2018: a stochastic dynamic system): in training, each step's update of
a sample is dropped with probability ``p(t_n)`` and kept ones are scaled by
``1 / (1 - p(t_n))``, so that the expected update is the step's; in eval, nothing changes.

``t_n`` is the step's start in unit depth, so the probability belongs to a depth, not to
a step's index: refined or with more steps, each step keeps the probability of its time
(more steps, each as likely to drop, drop a larger number of smaller updates: the noise of
a depth interval falls as its steps shrink)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import basis as basis_lib

MODES = ("row", "batch")
SCHEDULES = ("linear", "constant", "cells")


@dataclass(frozen=True)
class StochasticDepth:
    """``p``: the drop probability, at depth 1 for the ``linear`` schedule (``p t``, as
    drop-path rates rise over a timm model's blocks) or at every depth (``constant``);
    ``cells``: for the ``cells`` schedule, one probability per equal cell of depth (a
    converted stage's blocks' drop-path rates, cell ``k`` block ``k``'s; ``p`` is then
    their largest); ``mode``: ``row`` drops each sample's update on its own, ``batch`` the
    whole batch's (as ``torchvision.ops.stochastic_depth``'s modes)."""

    p: float = 0.0
    mode: str = "row"
    schedule: str = "linear"
    cells: tuple[float, ...] | None = None

    def __post_init__(self):
        if (self.schedule == "cells") != (self.cells is not None):
            raise ValueError("stochastic_depth_schedule 'cells' goes with cells (and only it)")
        if self.cells is not None:
            cells = tuple(self.cells)
            if not cells:
                raise ValueError("cells must hold one drop probability per cell, got none")
            for k, c in enumerate(cells):
                _check_probability(c, f"cells[{k}]")
            object.__setattr__(self, "cells", cells)
            object.__setattr__(self, "p", max(cells))
        _check_probability(self.p, "stochastic_depth")
        if self.mode not in MODES:
            raise ValueError(f"stochastic_depth_mode must be one of {MODES}, got {self.mode!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"stochastic_depth_schedule must be one of {SCHEDULES}, got {self.schedule!r}"
            )

    def probability(self, t: float) -> float:
        """The drop probability of a step starting at depth ``t`` (in [0, 1]); for
        ``cells``, that of the cell a ``piecewise_constant`` basis reads at ``t`` (the
        cell whose weights the step's first stage takes)."""
        if self.schedule == "cells":
            ((cell, _),) = basis_lib.get("piecewise_constant", len(self.cells)).coefficients(t)
            return self.cells[cell]
        return self.p * t if self.schedule == "linear" else self.p

    def factors(self, x: torch.Tensor, starts) -> list:
        """One factor per step starting at ``starts``: None where nothing drops, else a
        tensor of ``x``'s dtype and device, 0 or ``1 / (1 - p)``, of shape ``(B, 1, ...)``
        (row) or ``()`` (batch), drawn from the default generator of ``x``'s device."""
        shape = (x.shape[0],) + (1,) * (x.dim() - 1) if self.mode == "row" and x.dim() else ()
        out = []
        for t in starts:
            p = self.probability(t)
            if p == 0.0:
                out.append(None)
                continue
            keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
            out.append(keep.div_(1.0 - p))
        return out

    @property
    def active(self) -> bool:
        return self.p > 0


def _check_probability(p, name: str) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 <= p < 1):
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
