"""``TimeBatchNorm2d``: batch normalisation piecewise constant in depth, and the context
that freezes every batch norm's statistics while steps are recomputed."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .. import basis as basis_lib
from .checks import check_state, check_time, positive_float, positive_int, real
from .time_dependent import TimeDependent


class TimeBatchNorm2d(TimeDependent):
    """Batch normalisation, piecewise constant in depth: ``n_cells`` sets of running
    statistics and affine parameters; ``bn(t, x)`` uses the cell of ``t``.

    ``weight``, ``bias``, ``running_mean``, ``running_var``: ``(n_cells, channels)``.
    Refinement splits cells (exact). Projection averages cells (the L2 projection of the
    affine parameters and the statistics).
    """

    _basis_tensors = ("weight", "bias", "running_mean", "running_var")

    def __init__(
        self,
        channels: int,
        n_cells: int = 1,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get("piecewise_constant", positive_int(n_cells, "n_cells")))
        self.channels = positive_int(channels, "channels")
        self.eps = positive_float(eps, "eps")
        if momentum is None:
            raise ValueError(
                "momentum must be a number in [0, 1]; None (nn.BatchNorm2d's cumulative "
                "average) is not supported"
            )
        self.momentum = real(momentum, "momentum")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum}")
        factory = {"device": device, "dtype": dtype}
        shape = (n_cells, channels)
        self.weight = nn.Parameter(torch.ones(shape, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(shape, **factory)) if affine else None
        self.register_buffer("running_mean", torch.zeros(shape, **factory))
        self.register_buffer("running_var", torch.ones(shape, **factory))

    def project(self, n_basis: int, basis: str | None = None) -> list:
        """Statistics stay piecewise constant: projects onto ``n_basis`` cells whatever
        ``basis`` is asked for."""
        return super().project(n_basis, "piecewise_constant")

    def forward(self, t: float, x: torch.Tensor) -> torch.Tensor:
        check_state(x, self.channels, "channels")
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
        return f"{self.channels}, n_cells={self.n_basis}, eps={self.eps}, momentum={self.momentum}"


@contextlib.contextmanager
def frozen_batch_stats(module: nn.Module):
    """Within the block, batch norms in ``module`` (contnet's and torch's) normalise as
    usual but leave their running statistics alone: for steps recomputed during backward,
    whose statistics the forward pass already counted."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, (TimeBatchNorm2d, nn.modules.batchnorm._BatchNorm))
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
