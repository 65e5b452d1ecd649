"""Refinement and projection of every time-dependent layer of a module tree, and of an
optimizer's state with them: the layers move to another basis together, each by the
exact refinement matrix or the L2 projection, a unit's batch norms following its
weights' cells."""

from __future__ import annotations

import torch
from torch import nn

from .. import basis as basis_lib
from .norm import TimeBatchNorm
from .protocol import Unit, conforms
from .time_dependent import TimeDependent

__all__ = ["map_bases", "refine_bases", "project"]

# Optimizer statistics that are non-negative by construction: second moments (Adam, AdamW,
# NAdam, RAdam), their running maximum (AMSGrad), RMSprop's and Adadelta's running squares,
# Adagrad's sum of squares, Adamax's infinity norm, Rprop's step sizes.
_NONNEGATIVE_STATE = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "sum", "exp_inf", "step_size"}
)


def _nonnegative_map(M: torch.Tensor) -> torch.Tensor:
    """``M`` if it has no negative entry, else ``|M|`` with each row scaled to sum to one:
    every new value a weighted mean of the old ones. An L2 projection has negative entries,
    which would make a second moment negative (a NaN square root in Adam's step)."""
    if not (M < 0).any():
        return M
    A = M.abs()
    rows = A.sum(1, keepdim=True)
    return torch.where(rows > 0, A / rows.clamp_min(torch.finfo(A.dtype).tiny), A)


def _move_optimizer_state(optimizer, changes) -> None:
    """Put every new parameter in its old one's place in ``optimizer`` and carry its state
    over, mapping each state tensor of the old parameter's shape (momentum buffers, Adam
    moments) by the same matrix as the parameter -- the non-negative statistics of
    ``_NONNEGATIVE_STATE`` by :func:`_nonnegative_map` of it; scalars (``step``) are kept."""
    for old, new, M in changes:
        if not isinstance(new, nn.Parameter):
            continue
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = optimizer.state.pop(old, None)
        if state:
            optimizer.state[new] = {
                k: basis_lib.apply_matrix(_nonnegative_map(M) if k in _NONNEGATIVE_STATE else M, v)
                if isinstance(v, torch.Tensor) and v.shape == old.shape
                else v
                for k, v in state.items()
            }


def map_bases(module: nn.Module, target, optimizer=None) -> dict:
    """Move every time-dependent layer of ``module`` to the basis ``target(layer)`` (the
    batch norms of a unit to as many cells as ``target(unit)`` has), and
    the ``optimizer``'s state with them. Every target is computed, and every argument
    checked, before anything changes: an error leaves the module and the optimizer as
    they were."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    follow = {}  # a unit's batch norms: piecewise constant on its weights' cells
    for unit in module.modules():
        if conforms(unit, Unit) and not isinstance(unit, TimeDependent):
            cells = basis_lib.get("piecewise_constant", target(unit).n_cells)
            follow.update({n: cells for n in unit.modules() if isinstance(n, TimeBatchNorm)})
    plans = []
    for m in module.modules():
        if isinstance(m, TimeDependent):
            new = follow.get(m) or target(m)
            if new != m.basis:
                plans.append((m, new, basis_lib.transfer_matrix(m.basis, new)))
    changes = []
    for m, new, M in plans:
        changes += m._apply_basis_map(new, M)
    if optimizer is not None:
        _move_optimizer_state(optimizer, changes)
    return {new: M for _, new, M in changes}


def refine_bases(module: nn.Module, optimizer=None) -> dict:
    """Refine every time-dependent layer of ``module`` to the next finer basis of its
    family (exact: ``theta(t)`` is unchanged), and the ``optimizer``'s state with it.
    Returns ``{new_tensor: R}`` with ``new = R @ old`` along the node dimension."""
    return map_bases(module, lambda m: m.basis.refined(), optimizer)


def project(module: nn.Module, n_basis: int, basis: str | None = None, *, optimizer=None) -> dict:
    """L2-project every time-dependent layer of ``module`` onto ``n_basis`` nodes of
    ``basis`` (default: each layer's own family). Batch-norm statistics of a unit
    (:class:`contnet.nn.Unit`) go onto as many cells as its new weight basis has; other batch norms
    onto ``n_basis`` cells. ``n_steps`` is left as it is. Returns ``{tensor: P}`` with
    ``new = P @ old`` along the node dimension.
    """
    if basis is not None:
        basis_lib.check_family(basis)

    def target(m):
        if isinstance(m, TimeBatchNorm):
            return basis_lib.get("piecewise_constant", n_basis)
        return basis_lib.get(basis or m.basis.family, n_basis)

    return map_bases(module, target, optimizer)
