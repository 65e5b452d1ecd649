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
# Adagrad's sum of squares, Adamax's infinity norm, Rprop's step sizes, Adafactor's factored
# second moments.
_NONNEGATIVE_STATE = frozenset(
    {
        "exp_avg_sq",
        "max_exp_avg_sq",
        "square_avg",
        "acc_delta",
        "sum",
        "exp_inf",
        "step_size",
        "row_var",
        "col_var",
        "variance",
    }
)


def _nonnegative_map(M: torch.Tensor) -> torch.Tensor:
    """``M`` if it has no negative entry, else ``|M|`` with each row scaled to sum to one:
    every new value a weighted mean of the old ones. An L2 projection has negative weights,
    which would make a second moment negative (a NaN square root in Adam's step)."""
    if not (M < 0).any():
        return M
    A = M.abs()
    rows = A.sum(1, keepdim=True)
    return torch.where(rows > 0, A / rows.clamp_min(torch.finfo(A.dtype).tiny), A)


def _along_nodes(value, param) -> bool | None:
    """How an optimizer state tensor follows ``param``'s nodes: True where it holds one
    entry per node along its first dimension (the parameter's shape, or a factored
    statistic of it whose other dimensions are 1 or the parameter's: mapped as the
    parameter is), False where it is shared by every node (first dimension 1: kept), None
    where it is neither. Scalars are kept."""
    if value.dim() == 0:
        return False
    if value.dim() != param.dim() or any(
        v not in (1, p) for v, p in zip(value.shape[1:], param.shape[1:])
    ):
        return None
    if value.shape[0] == param.shape[0]:  # (with one node, a statistic shared by every
        return True  # node is the node's: mapped too, which the optimizer broadcasts)
    return False if value.shape[0] == 1 else None


def _check_plain(plans) -> None:
    """Every tensor a layer about to move holds is its own parameter or buffer: one that a
    parametrization or a hook computes from others (``weight_norm``'s, ``spectral_norm``'s)
    cannot be mapped linearly node by node, and is refused before anything changes."""
    for m, _, _ in plans:
        for name, _ in m._tensors():
            owner, leaf = m._owner(name) if hasattr(m, "_owner") else (m, name)
            if leaf not in owner._parameters and leaf not in owner._buffers:
                raise ValueError(
                    f"{type(m).__name__}.{name} is computed by a parametrization or a hook "
                    "(weight_norm, spectral_norm), whose tensors do not map node by node: "
                    "remove it before refining or projecting "
                    "(torch.nn.utils.parametrize.remove_parametrizations), then apply it again"
                )


def _check_optimizer_state(optimizer, plans) -> None:
    """Every tensor of the state of a parameter about to move follows its nodes
    (:func:`_along_nodes`): else refuse, before anything changes."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    moving = [p for m, _, _ in plans for _, p in m._tensors() if isinstance(p, nn.Parameter)]
    if moving and not any(id(p) in held for p in moving):
        raise ValueError(
            f"optimizer ({type(optimizer).__name__}) holds none of the parameters that move "
            "to another basis: pass the optimizer of this module"
        )
    moving_ids = {id(p) for p in moving}
    for m, _, _ in plans:
        for name, param in m._tensors():
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    if _along_nodes(value, param) is None:
                        raise ValueError(
                            f"optimizer ({type(optimizer).__name__}) holds state {key!r} of "
                            f"shape {tuple(value.shape)} for {name} of shape "
                            f"{tuple(param.shape)}, which cannot follow its nodes to another "
                            "basis: refine or project without the optimizer and build a new one"
                        )
    for param, state in optimizer.state.items():  # state over all parameters (LBFGS's)
        if id(param) in moving_ids:
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and not _fits(value, param):
                raise ValueError(
                    f"optimizer ({type(optimizer).__name__}) holds state {key!r} of shape "
                    f"{tuple(value.shape)} beside a parameter of shape {tuple(param.shape)}: "
                    "state kept across its parameters (as LBFGS's history) cannot follow "
                    "parameters that change shape; refine or project without the optimizer "
                    "and build a new one"
                )


def _fits(value, param) -> bool:
    """Whether a state tensor is a scalar or has its parameter's layout (broadcast)."""
    return value.dim() <= param.dim() and all(
        v in (1, p) for v, p in zip(reversed(value.shape), reversed(param.shape))
    )


def _move_optimizer_state(optimizer, changes) -> None:
    """Put every new parameter in its old one's place in ``optimizer`` and carry its state
    over, mapping each state tensor that holds one entry per node (momentum buffers, Adam
    moments, Adafactor's factored moments) by the same matrix as the parameter -- the
    non-negative statistics of ``_NONNEGATIVE_STATE`` by :func:`_nonnegative_map` of it;
    scalars (``step``) and statistics shared by every node are kept."""
    for old, new, M in changes:
        if not isinstance(new, nn.Parameter):
            continue
        for group in optimizer.param_groups:  # in place: LBFGS keeps the list itself
            params = group["params"]
            params[:] = [new if p is old else p for p in params]
        state = optimizer.state.pop(old, None)
        if state:
            optimizer.state[new] = {
                k: basis_lib.apply_matrix(_nonnegative_map(M) if k in _NONNEGATIVE_STATE else M, v)
                if isinstance(v, torch.Tensor) and _along_nodes(v, old)
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
    _check_plain(plans)
    if optimizer is not None:
        _check_optimizer_state(optimizer, plans)
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
