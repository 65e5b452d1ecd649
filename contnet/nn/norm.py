"""Normalisations in depth: batch norms piecewise constant in depth (``TimeBatchNorm1d/2d/3d``),
layer and group norms whose affine parameters are basis expansions; and the context that
freezes every batch norm's statistics while steps are recomputed."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .. import basis as basis_lib
from .checks import check_state, check_time, positive_float, positive_int, real
from .time_dependent import TimeDependent


class TimeBatchNorm(TimeDependent):
    """Batch normalisation, piecewise constant in depth: ``n_cells`` sets of running
    statistics and affine parameters; ``bn(t, x)`` uses the cell of ``t``
    (:class:`TimeBatchNorm1d`, :class:`TimeBatchNorm2d`, :class:`TimeBatchNorm3d` differ
    only in the input they take, as ``nn.BatchNormNd`` do).

    ``weight``, ``bias``, ``running_mean``, ``running_var``: ``(n_cells, num_features)``.
    Refinement splits cells (exact). Projection averages cells (the L2 projection of the
    affine parameters and the statistics). A unit's batch norms keep as many cells as its
    weight basis has (see :func:`contnet.refine`).
    """

    _basis_tensors = ("weight", "bias", "running_mean", "running_var")
    _read_tensors = ()  # read by cell, as views (the statistics are updated in place)
    _ranks: tuple[int, ...] = (4,)  # the x.dim() it takes

    def __init__(
        self,
        num_features: int,
        n_cells: int = 1,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get("piecewise_constant", positive_int(n_cells, "n_cells")))
        self.num_features = positive_int(num_features, "num_features")
        self.eps = positive_float(eps, "eps")
        if momentum is None:
            raise ValueError(
                "momentum must be a number in [0, 1]; None (nn.BatchNorm's cumulative "
                "average) is not supported"
            )
        self.momentum = real(momentum, "momentum")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum}")
        factory = {"device": device, "dtype": dtype}
        shape = (n_cells, num_features)
        self.weight = nn.Parameter(torch.ones(shape, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(shape, **factory)) if affine else None
        self.register_buffer("running_mean", torch.zeros(shape, **factory))
        self.register_buffer("running_var", torch.ones(shape, **factory))

    @property
    def channels(self) -> int:
        return self.num_features

    def project(self, n_basis: int, basis: str | None = None) -> list:
        """Statistics stay piecewise constant: projects onto ``n_basis`` cells whatever
        ``basis`` is asked for."""
        return super().project(n_basis, "piecewise_constant")

    def _check(self, x):
        if x.dim() not in self._ranks:
            dims = " or ".join(f"{r}-d" for r in self._ranks)
            raise ValueError(
                f"x must be a {dims} tensor for {type(self).__name__}, got shape {tuple(x.shape)}"
            )
        check_state(x, self.num_features, "num_features", x.dim() - 2)

    def forward(self, t: float, x: torch.Tensor, weights=None) -> torch.Tensor:
        """Normalise ``x`` with cell ``t``'s statistics (batch statistics in training,
        updating the cell's running ones). ``weights`` is accepted and ignored: the cells
        are read here, as views."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            check_state(x, self.num_features, "num_features")
        self._check(x)
        ((k, _),) = self.coefficients(check_time(t))
        w = self.weight[k] if self.weight is not None else None
        b = self.bias[k] if self.bias is not None else None
        return F.batch_norm(
            x,
            self.running_mean[k],
            self.running_var[k],
            w,
            b,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, n_cells={self.n_basis}, eps={self.eps}, momentum={self.momentum}"
        )


class TimeBatchNorm1d(TimeBatchNorm):
    """:class:`TimeBatchNorm` of ``(N, C)`` or ``(N, C, L)`` input."""

    _ranks = (2, 3)


class TimeBatchNorm2d(TimeBatchNorm):
    """:class:`TimeBatchNorm` of ``(N, C, H, W)`` input."""

    _ranks = (4,)


class TimeBatchNorm3d(TimeBatchNorm):
    """:class:`TimeBatchNorm` of ``(N, C, D, H, W)`` input."""

    _ranks = (5,)


class TimeLayerNorm(TimeDependent):
    """Layer normalisation over the last dimensions ``normalized_shape``, its affine
    ``weight`` and ``bias`` (``(K, *normalized_shape)``) expanded in a basis in depth;
    initialised as ``nn.LayerNorm`` (ones and zeros at every node)."""

    _basis_tensors = ("weight", "bias")

    def __init__(
        self,
        normalized_shape,
        *,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        shape = (
            normalized_shape if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        )
        self.normalized_shape = tuple(positive_int(v, "normalized_shape") for v in shape)
        if not self.normalized_shape:
            raise ValueError("normalized_shape must name at least one dimension, got ()")
        self.eps = positive_float(eps, "eps")
        factory = {"device": device, "dtype": dtype}
        stack = (self.basis.n_basis, *self.normalized_shape)
        affine = bool(elementwise_affine)
        self.weight = nn.Parameter(self._constant(stack, 1.0, factory)) if affine else None
        self.bias = nn.Parameter(self._constant(stack, 0.0, factory)) if affine and bias else None

    def _constant(self, shape, value, factory):
        return self.basis.constant(torch.full(shape[1:], value, **factory))

    def forward(self, t: float, x: torch.Tensor, weights=None) -> torch.Tensor:
        """``F.layer_norm`` with ``weight(t)``, ``bias(t)`` (``weights``: their values at
        ``t`` if a block looked them up)."""
        n = len(self.normalized_shape)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            check_state(x, 1)
        if tuple(x.shape[x.dim() - n :]) != self.normalized_shape or x.dim() < n:
            raise ValueError(
                f"x must end in normalized_shape {self.normalized_shape}, got {tuple(x.shape)}"
            )
        return self.apply_weights(x, self._weights(t, weights))

    def apply_weights(self, x: torch.Tensor, weights) -> torch.Tensor:
        w = weights[0] if len(weights) > 0 else None
        b = weights[1] if len(weights) > 1 else None
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, " + super().extra_repr()


class TimeGroupNorm(TimeDependent):
    """Group normalisation of ``(N, C, *)`` input, its per-channel affine ``weight`` and
    ``bias`` (``(K, num_channels)``) expanded in a basis in depth; initialised as
    ``nn.GroupNorm``."""

    _basis_tensors = ("weight", "bias")

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        *,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        self.num_groups = positive_int(num_groups, "num_groups")
        self.num_channels = positive_int(num_channels, "num_channels")
        if num_channels % num_groups:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.eps = positive_float(eps, "eps")
        factory = {"device": device, "dtype": dtype}
        stack = (self.basis.n_basis, num_channels)
        one = self.basis.constant(torch.ones(num_channels, **factory))
        self.weight = nn.Parameter(one) if affine else None
        self.bias = nn.Parameter(torch.zeros(stack, **factory)) if affine else None

    def forward(self, t: float, x: torch.Tensor, weights=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            check_state(x, self.num_channels, "num_channels")
        if x.shape[1] != self.num_channels:
            raise ValueError(
                f"x must have shape (N, {self.num_channels}, *) for num_channels="
                f"{self.num_channels}, got {tuple(x.shape)}"
            )
        return self.apply_weights(x, self._weights(t, weights))

    def apply_weights(self, x: torch.Tensor, weights) -> torch.Tensor:
        w = weights[0] if len(weights) > 0 else None
        b = weights[1] if len(weights) > 1 else None
        return F.group_norm(x, self.num_groups, w, b, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, " + super().extra_repr()


@contextlib.contextmanager
def frozen_batch_stats(module: nn.Module):
    """Within the block, batch norms in ``module`` (contnet's and torch's) normalise as
    usual but leave their running statistics alone: for steps recomputed during backward,
    whose statistics the forward pass already counted."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, (TimeBatchNorm, nn.modules.batchnorm._NormBase))
    ]
    saved = [(m, m.momentum, getattr(m, "num_batches_tracked", None)) for m in norms]
    counts = [None if n is None else n.clone() for _, _, n in saved]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for (m, momentum, n), c in zip(saved, counts):
            m.momentum = momentum
            if n is not None:
                n.copy_(c)


def recompute_hazards(module: nn.Module) -> list[str]:
    """What in ``module`` changes its own state at every call in training mode, other
    than norms' statistics (which :func:`frozen_batch_stats` holds still): parametrizations
    holding buffers (``spectral_norm``'s power iteration, ``_u`` and ``_v``) and
    ``torch.nn.utils.spectral_norm``'s hook. A step recomputed in backward would change it
    again and differentiate other weights than the forward pass used. Each as
    ``"path (kind)"``; only those in training mode (in eval mode they keep still)."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    found = []
    for path, m in module.named_modules():
        plist = m._modules.get("parametrizations")
        if isinstance(plist, nn.ModuleDict):
            for tensor, chain in plist.items():
                for p in chain:
                    if p.training and any(True for _ in p.buffers()):
                        found.append(f"{path or 'unit'}.{tensor} ({type(p).__name__})")
        if m.training and any(isinstance(h, SpectralNorm) for h in m._forward_pre_hooks.values()):
            found.append(f"{path or 'unit'} (torch.nn.utils.spectral_norm)")
    return found
