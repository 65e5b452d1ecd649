"""Refinement and projection in depth of a module tree: every time-dependent layer to
another basis (from :mod:`contnet.nn.refine`) and, by one rule for both, every block's step
count with it: ``n_steps`` follows the number of basis nodes (doubled by refinement,
scaled by the ratio of nodes by projection), so a block keeps its steps per node; pass
``steps=False`` to keep the step counts as they are."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..block import ContinuousBlock
from ..nn import TimeBatchNorm, TimeDependent, Unit, conforms, refine_bases
from ..nn import project as project_bases

__all__ = ["BasisChange", "refine", "project"]


class BasisChange(Mapping):
    """What :func:`refine` or :func:`project` changed: a mapping ``{new tensor: M}`` with
    ``new = M @ old`` along the node dimension (to move state one keeps of the old tensors),
    whose repr is a one-line summary rather than the tensors."""

    def __init__(self, what: str, maps: dict, bases: tuple, steps: tuple):
        self.what, self._maps = what, maps
        self.n_basis, self.n_steps = bases, steps  # (before, after), each sorted and distinct

    def __getitem__(self, key):
        return self._maps[key]

    def __iter__(self):
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def __repr__(self) -> str:
        def one(v):  # a value, a few, or their range
            return v[0] if len(v) == 1 else list(v) if len(v) <= 4 else f"{v[0]}..{v[-1]}"

        def span(pair):
            return f"{one(pair[0])} -> {one(pair[1])}"

        steps = f", n_steps {span(self.n_steps)}" if self.n_steps[0] else ""
        return f"BasisChange({self.what} {len(self)} tensors, n_basis {span(self.n_basis)}{steps})"


def _state(module: nn.Module) -> tuple[list, list]:
    """The node counts of the blocks' units (of the time-dependent layers where there is no
    block) and the blocks, in module order."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    blocks = [m for m in module.modules() if isinstance(m, ContinuousBlock)]
    units = [b.unit for b in blocks if conforms(b.unit, Unit)] or [
        m
        for m in module.modules()
        if isinstance(m, TimeDependent) and not isinstance(m, TimeBatchNorm)
    ]
    return [u.n_basis for u in units], blocks


def _distinct(values) -> tuple:
    return tuple(sorted(set(values)))


def _check_steps(steps) -> None:
    if not isinstance(steps, bool):
        raise TypeError(f"steps must be True or False, got {steps!r}")


def _change(what: str, module: nn.Module, move, steps) -> BasisChange:
    """``move()`` the bases of ``module`` (it returns the maps), then give every block the
    step count ``steps(block, n_steps, K_old)`` (``K_old`` None for a unit without a
    basis), or keep them where ``steps`` is None; the summary of both."""
    before, blocks = _state(module)
    old = [(b.n_steps, b.unit.n_basis if conforms(b.unit, Unit) else None) for b in blocks]
    maps = move()
    if steps is not None:
        for b, (n, k) in zip(blocks, old):
            b.n_steps = steps(b, n, k)
    return BasisChange(
        what,
        maps,
        (_distinct(before), _distinct(_state(module)[0])),
        (_distinct(n for n, _ in old), _distinct(b.n_steps for b in blocks)),
    )


def refine(module: nn.Module, *, steps: bool = True, optimizer=None) -> BasisChange:
    """Refine every time-dependent layer of ``module`` to the next finer basis (exact:
    ``theta(t)`` is unchanged) and, with ``steps``, double every block's ``n_steps``. The
    batch norms of a unit follow its weights' cells (a ``legendre`` basis has
    one cell at every size: its norms keep theirs).

    The refined tensors are new parameters: pass the ``optimizer`` so that it holds them in
    place of the old ones, with its per-parameter state (momentum, moments) mapped by the
    same linear map. (A ``DistributedDataParallel`` wrapper must be built anew.) Returns a
    :class:`BasisChange`, ``{new_tensor: R}`` with ``new = R @ old`` along the node
    dimension.
    """
    _check_steps(steps)
    doubled = (lambda b, n, k: 2 * n) if steps else None
    return _change("refined", module, lambda: refine_bases(module, optimizer), doubled)


def project(
    module: nn.Module, n_basis: int, basis: str | None = None, *, steps: bool = True, optimizer=None
) -> BasisChange:
    """L2-project every time-dependent layer of ``module`` onto ``n_basis`` nodes of
    ``basis`` (default: each layer's own family); batch-norm statistics of a unit go onto
    as many cells as its new weight basis has (see :func:`contnet.nn.project`). With
    ``steps``, every block's ``n_steps`` is scaled as its unit's node count is,
    ``round(n_steps * K_new / K_old)`` (at least 1), as :func:`refine` doubles it. Every
    argument is checked before anything changes. Returns a :class:`BasisChange`
    (``new = P @ old``)."""
    _check_steps(steps)

    def scaled(b, n, k):
        if k is None or b.unit.n_basis == k:
            return n
        return max(1, round(n * b.unit.n_basis / k))

    def move():
        return project_bases(module, n_basis, basis, optimizer=optimizer)

    return _change("projected", module, move, scaled if steps else None)
