"""The activations of the fused epilogue: their codes, shared with
``csrc/include/contnet/activations.h``, and the functions the references compute."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: activation codes shared with csrc/include/contnet/activations.h
ACT_CODES = {"identity": 0, "relu": 1, "tanh": 2, "gelu": 3, "silu": 4, "softplus": 5}


def gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact gelu, ``z * Phi(z)``, written out as the kernels compute it. ``F.gelu``'s
    vectorised CPU loop gives NaN at ``+inf`` in float32 (its scalar loop, float64 and the
    formula give ``inf``); this form gives every value ``F.gelu`` gives in float64."""
    return 0.5 * z * (1.0 + torch.erf(z * math.sqrt(0.5)))


ACT_FUNCS = {
    0: lambda z: z,
    1: F.relu,
    2: torch.tanh,
    3: gelu,
    4: F.silu,
    5: F.softplus,
}
