"""Refinement in depth of a module tree: every time-dependent layer to the next finer
basis (exactly) and every block's step count doubled; projection (from
:mod:`contnet.nn.refine`) leaves the step counts as they are."""

from __future__ import annotations

from torch import nn

from ..block import ContinuousBlock
from ..nn import project, refine_bases

__all__ = ["refine", "project"]


def refine(module: nn.Module, *, steps: bool = True, optimizer=None) -> dict:
    """Refine every time-dependent layer of ``module`` to the next finer basis (exact:
    ``theta(t)`` is unchanged) and, with ``steps``, double every block's ``n_steps``. The
    batch norms of a unit follow its weights' cells (a ``legendre`` basis has
    one cell at every size: its norms keep theirs).

    The refined tensors are new parameters: pass the ``optimizer`` so that it holds them in
    place of the old ones, with its per-parameter state (momentum, moments) mapped by the
    same linear map. (A ``DistributedDataParallel`` wrapper must be built anew.) Returns
    ``{new_tensor: R}`` with ``new = R @ old`` along the node dimension.
    """
    maps = refine_bases(module, optimizer)
    if steps:
        for m in module.modules():
            if isinstance(m, ContinuousBlock):
                m.n_steps = 2 * m.n_steps
    return maps
