"""``basis_interp``: the time-interpolated weight lookup of every stage time in one launch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import extension
from .checks import check_list, check_tensor
from .reference import basis_interp_reference


def basis_interp(phi: torch.Tensor, thetas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Time-interpolated weights ``out[j][s] = sum_k phi[s, k] * thetas[j][k]``.

    ``phi``: float64 ``(S, K)`` coefficients of the basis at ``S`` stage times (see
    :meth:`contnet.basis.Basis.__call__`), on the tensors' device; a constant (no gradient).
    ``thetas``: tensors with ``K`` nodes along dim 0. Returns tensors of shape
    ``(S, *theta.shape[1:])``, all in one launch; differentiable in ``thetas``. Where each
    node of a theta is one dense block in one layout for all (channels_last filter banks
    stacked along dim 0, as a channels_last block keeps them) the kernels read it in place
    and the output keeps that layout (dim 0 of stride ``theta[0].numel()``); otherwise, and
    from the reference, the output is contiguous.
    """
    check_tensor(phi, "phi")
    if phi.dtype != torch.float64 or phi.dim() != 2:
        raise ValueError(f"phi must be a float64 (S, K) matrix, got {phi.dtype} {tuple(phi.shape)}")
    if phi.shape[1] < 1:
        raise ValueError("phi must have at least one node (column)")
    if phi.requires_grad:
        raise ValueError("phi must not require grad: the basis coefficients are constants")
    check_list(thetas, "thetas")
    if not thetas:
        raise ValueError("thetas must hold at least one tensor")
    for j, t in enumerate(thetas):
        check_tensor(t, f"thetas[{j}]")
        if t.dim() < 1 or t.shape[0] != phi.shape[1]:
            raise ValueError(
                f"thetas[{j}] must have {phi.shape[1]} nodes along dim 0, got {tuple(t.shape)}"
            )
        if t.device != phi.device:
            raise ValueError(f"thetas[{j}] must be on phi's device ({phi.device}), got {t.device}")
    if extension.use_extension("basis_interp", phi):
        return torch.ops.contnet.basis_interp(phi, list(thetas))
    return basis_interp_reference(phi, thetas)
