"""The base of every time-dependent layer: parameters expanded in a basis in depth,
``theta(t) = sum_k phi_k(t) theta_k`` (a leading dimension of ``K`` nodes), with exact
refinement and L2 projection onto another basis; and the learnable scalar ``k(t)``."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import basis as basis_lib
from .checks import check_time


def interpolate(theta: torch.Tensor, coefficients) -> torch.Tensor:
    """``sum_k phi_k theta[k]`` from ``(k, phi_k)`` pairs; a single unit coefficient is a
    view of the node (no copy)."""
    (k0, w0), *rest = coefficients
    if not rest and w0 == 1.0:
        return theta[k0]
    out = theta[k0] * w0
    for k, w in rest:
        if w != 0.0:
            out = out + theta[k] * w
    return out


def node_layout_like(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new``, a stack of filter banks along dim 0 like ``old``, with ``old``'s node layout:
    channels_last filter banks where ``old``'s are (see :meth:`TimeConv2d._apply`), so a
    convolution of channels_last input takes them without converting them at every call."""
    if old.dim() == 5 and new.dim() == 5:
        flat = old.flatten(0, 1)
        if not flat.is_contiguous() and flat.is_contiguous(memory_format=torch.channels_last):
            cl = torch.channels_last
            return new.flatten(0, 1).contiguous(memory_format=cl).unflatten(0, new.shape[:2])
    return new


def filters_like(layout: torch.memory_format, stack: torch.Tensor) -> torch.Tensor:
    """A stack of 2-d filter banks (5-d) with every bank in ``layout`` (no copy where it is
    already); any other tensor as it is."""
    if stack.dim() != 5:
        return stack
    flat = stack.flatten(0, 1)
    if flat.is_contiguous(memory_format=layout):
        return stack
    return flat.contiguous(memory_format=layout).unflatten(0, stack.shape[:2])


class TimeDependent(nn.Module):
    """Base of modules whose parameters and buffers named in ``_basis_tensors`` carry a
    leading dimension of basis nodes. Gives them exact :meth:`refine` and L2
    :meth:`project`.

    Both replace each such parameter by a new ``nn.Parameter`` of the new size (changing
    the shape of a parameter in place would leave autograd's cached gradient accumulator
    at the old shape) and return ``[(old, new, M)]`` with ``new = M @ old`` along dim 0,
    so callers can move optimiser state to the new parameters, mapped the same way (see
    :func:`contnet.refine`)."""

    _basis_tensors: tuple[str, ...] = ()
    #: the tensors the layer reads at ``t`` as its weights (a block interpolates them for
    #: every stage time of a forward pass at once); default: all of ``_basis_tensors``
    _read_tensors: tuple[str, ...] | None = None

    def __init__(self, basis: basis_lib.Basis):
        super().__init__()
        self.basis = basis

    @property
    def n_basis(self) -> int:
        return self.basis.n_basis

    def coefficients(self, t: float):
        """Non-zero ``(k, phi_k(t))`` of this layer's basis at time ``t``."""
        return self.basis.coefficients(t)

    def basis_tensors(self) -> list[torch.Tensor]:
        """The node stacks the layer reads at ``t`` (those that are not None), in the order
        of :meth:`at`'s result and of the ``weights`` its ``forward`` takes."""
        names = self._basis_tensors if self._read_tensors is None else self._read_tensors
        return [v for v in (getattr(self, n) for n in names) if v is not None]

    def at(self, t: float) -> tuple[torch.Tensor, ...]:
        """The values at ``t`` of :meth:`basis_tensors` (views of a node where the basis
        has a single unit coefficient there)."""
        c = self.coefficients(check_time(t))
        return tuple(interpolate(v, c) for v in self.basis_tensors())

    def _init_like_torch(self) -> None:
        """Every node of ``weight`` and ``bias`` as ``nn.Linear`` and ``nn.ConvNd`` draw
        theirs (Kaiming uniform with ``a = sqrt(5)``; bias uniform in ``+-1/sqrt(fan_in)``):
        with one node, the same draws from the same generator state."""
        bound = 1.0 / math.sqrt(self.weight[0, 0].numel())  # fan_in
        with torch.no_grad():
            values = torch.empty_like(self.weight)
            for k in range(self.n_basis):
                nn.init.kaiming_uniform_(values[k], a=math.sqrt(5))
            self.weight.copy_(self.basis.from_values(values))
            if self.bias is not None:
                self.bias.copy_(
                    self.basis.from_values(torch.empty_like(self.bias).uniform_(-bound, bound))
                )

    def _weights(self, t: float, weights) -> tuple:
        """``weights`` if given (the values at ``t`` a block looked up), else :meth:`at`."""
        return self.at(t) if weights is None else weights

    def _format_like(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The layout a replacement tensor takes (subclasses keep memory formats)."""
        return new

    def _tensors(self):
        for name in self._basis_tensors:
            v = getattr(self, name)
            if v is not None:
                yield name, v

    def _apply_basis_map(self, new_basis: basis_lib.Basis, M: torch.Tensor) -> list:
        """Replace every basis tensor ``theta`` by ``M @ theta`` (along dim 0)."""
        changes = []
        with torch.no_grad():
            for name, old in list(self._tensors()):
                value = self._format_like(old, basis_lib.apply_matrix(M, old.detach()))
                if isinstance(old, nn.Parameter):
                    new = nn.Parameter(value, requires_grad=old.requires_grad)
                else:
                    new = value
                self._replace(name, new)
                changes.append((old, new, M))
        self.basis = new_basis
        return changes

    def _replace(self, name: str, new: torch.Tensor) -> None:
        """Put ``new`` in the place of the basis tensor ``name``."""
        if isinstance(new, nn.Parameter):
            setattr(self, name, new)
        else:
            self._buffers[name] = new

    def refine(self) -> list:
        """Move to the next finer basis of the family without changing ``theta(t)``.
        Returns ``[(old, new, R)]`` for every tensor replaced (``new = R @ old``)."""
        return self._apply_basis_map(self.basis.refined(), self.basis.refine_matrix())

    def project(self, n_basis: int, basis: str | None = None) -> list:
        """L2-project onto ``n_basis`` nodes of ``basis`` (default: the current family).
        Returns ``[(old, new, P)]`` for every tensor replaced."""
        target = basis_lib.get(basis or self.basis.family, n_basis)
        return self._apply_basis_map(target, self.basis.projection_matrix(target))

    def extra_repr(self) -> str:
        return f"basis={self.basis.family}, n_basis={self.n_basis}"


class TimeScalar(TimeDependent):
    """A learnable scalar function of depth, ``k(t) = sum_k phi_k(t) theta_k`` (LM-ResNet's
    coefficient). Node values start uniform in ``init`` (LM-ResNet draws ``k_n`` from
    ``U(-0.1, 0)``, Lu et al. 2018)."""

    _basis_tensors = ("theta",)

    def __init__(
        self,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        *,
        init=(-0.1, 0.0),
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        lo, hi = init
        values = torch.empty(self.n_basis, device=device, dtype=dtype).uniform_(lo, hi)
        self.theta = nn.Parameter(self.basis.from_values(values))

    def at(self, times) -> torch.Tensor:
        """``k(t)`` at every time of ``times``, a tensor of ``len(times)`` values."""
        return torch.stack([interpolate(self.theta, self.coefficients(t)) for t in times])

    def forward(self, t: float) -> torch.Tensor:
        return interpolate(self.theta, self.coefficients(check_time(t)))
