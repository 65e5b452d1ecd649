"""``TimeLinear``: a linear layer whose weight and bias are basis expansions in depth."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import basis as basis_lib
from .checks import check_features, positive_int
from .time_dependent import TimeDependent


class TimeLinear(TimeDependent):
    """``y = x W(t)^T + b(t)``: ``weight`` ``(K, out_features, in_features)``, ``bias``
    ``(K, out_features)``. Called as ``linear(t, x)`` with ``x`` of shape
    ``(..., in_features)``. Every node is initialised as ``nn.Linear`` initialises its
    weight and bias; with one node, the same draws from the same generator state."""

    _basis_tensors = ("weight", "bias")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        K = self.basis.n_basis
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(K, out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(K, out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._init_like_torch()

    def forward(
        self, t: float, x: torch.Tensor, weights=None, *, use_bias: bool = True
    ) -> torch.Tensor:
        """``x W(t)^T + b(t)``; ``weights`` ``(W,)`` or ``(W, b)`` already at ``t`` (as a
        block looks them up for every stage time), else looked up here. ``use_bias=False``
        leaves the bias out (for a caller that fuses it)."""
        check_features(x, self.in_features, "in_features")
        return self.apply_weights(x, self._weights(t, weights), use_bias)

    def apply_weights(self, x: torch.Tensor, weights, use_bias: bool = True) -> torch.Tensor:
        """``F.linear`` with ``weights`` already at the stage time: no checks."""
        return F.linear(x, weights[0], weights[1] if use_bias and len(weights) > 1 else None)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, " + super().extra_repr()
        )
