"""``TimeConv2d``: a convolution whose weight and bias are basis expansions in depth."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import basis as basis_lib
from .checks import check_state, check_time, positive_int
from .time_dependent import TimeDependent, interpolate, node_layout_like


def conv_args(conv) -> tuple:
    """``(stride, padding, dilation, groups)`` of a convolution for ``F.conv2d``, each pair
    with equal entries passed as one int, which ``F.conv2d`` parses faster than a tuple
    (host time paid at every stage; bench/README.md has the figures)."""

    def arg(v):
        return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v

    return arg(conv.stride), arg(conv.padding), arg(conv.dilation), conv.groups


class TimeConv2d(TimeDependent):
    """2-d convolution with weight ``W(t)`` and bias ``b(t)`` expanded in a basis in depth.

    ``weight``: ``(K, out_channels, in_channels // groups, kh, kw)``; ``bias``:
    ``(K, out_channels)``. Called as ``conv(t, x)`` with ``x`` of shape ``(N, C_in, H, W)``.
    ``padding`` defaults to ``kernel_size // 2`` ("same" for odd kernels at stride 1).
    Every node is initialised independently as ``nn.Conv2d`` initialises its weight.
    """

    _basis_tensors = ("weight", "bias")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        stride=1,
        padding=None,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        ks = nn.modules.utils._pair(kernel_size)
        for v in ks:
            positive_int(v, "kernel_size")
        self.kernel_size = ks
        self.stride = nn.modules.utils._pair(stride)
        for v in self.stride:
            positive_int(v, "stride")
        self.dilation = nn.modules.utils._pair(dilation)
        for v in self.dilation:
            positive_int(v, "dilation")
        self.padding = self._padding(padding)
        K = self.basis.n_basis
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(K, out_channels, in_channels // groups, *ks, **factory)
        )
        self.bias = nn.Parameter(torch.empty(K, out_channels, **factory)) if bias else None
        self.reset_parameters()

    def _padding(self, padding) -> tuple:
        """``padding`` as a pair of ints; ``"valid"`` is 0, ``"same"`` (and None) the half
        of each dilated kernel, which keeps the size at stride 1 for odd kernels."""
        if padding == "valid":
            return (0, 0)
        if padding is None or padding == "same":
            spans = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
            if padding == "same" and (self.stride != (1, 1) or any(v % 2 for v in spans)):
                raise ValueError(
                    "padding='same' needs stride 1 and an odd kernel_size (after dilation), "
                    f"got stride={self.stride}, kernel_size={self.kernel_size}, dilation={self.dilation}"
                )
            return tuple(v // 2 for v in spans)
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        pad = nn.modules.utils._pair(padding)
        if len(pad) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in pad
        ):
            raise ValueError(f"padding must be one or two non-negative ints, got {padding!r}")
        return tuple(pad)

    def reset_parameters(self) -> None:
        fan_in = self.weight[0, 0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            values = torch.empty_like(self.weight)
            for k in range(self.n_basis):
                nn.init.kaiming_uniform_(values[k], a=math.sqrt(5))
            self.weight.copy_(self.basis.from_values(values))
            if self.bias is not None:
                self.bias.copy_(
                    self.basis.from_values(torch.empty_like(self.bias).uniform_(-bound, bound))
                )

    def _apply(self, fn, recurse=True):
        # nn.Module.to(memory_format=torch.channels_last) gives every 4-d and 5-d tensor the
        # 2-d channels_last layout, which a 5-d stack of K filter banks cannot take. The
        # stack goes through its 4-d view (K * out, in, kh, kw), so each node becomes a
        # channels_last filter bank; parameter identities are kept.
        def per_filter(t):
            if t.dim() == 5:
                return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2])
            return fn(t)

        return super()._apply(per_filter, recurse)

    def _format_like(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """A refined or projected weight keeps the node layout of the one it replaces."""
        return node_layout_like(old, new)

    def weight_at(self, t: float):
        """``(W(t), b(t))``; ``b`` is None without bias. A ``piecewise_constant`` basis
        gives views of a node."""
        c = self.coefficients(check_time(t))
        b = interpolate(self.bias, c) if self.bias is not None else None
        return interpolate(self.weight, c), b

    def basis_tensors(self) -> list[torch.Tensor]:
        """The tensors expanded in the basis, in the order of :meth:`weight_at`'s result."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def forward(
        self, t: float, x: torch.Tensor, weights=None, *, use_bias: bool = True
    ) -> torch.Tensor:
        """``conv(x; W(t), b(t))``. ``weights``: the values at ``t`` of
        :meth:`basis_tensors` (``(W,)`` or ``(W, b)``), as a block precomputes them for all
        stage times; else they are looked up here.
        ``use_bias=False`` leaves the bias out (for a caller that fuses it)."""
        check_state(x, self.in_channels, "in_channels")
        return self.apply_weights(x, self.weight_at(t) if weights is None else weights, use_bias)

    def apply_weights(self, x: torch.Tensor, weights, use_bias: bool = True) -> torch.Tensor:
        """``conv(x; W, b)`` with ``weights`` ``(W,)`` or ``(W, b)`` (``b`` may be None)
        already taken at the stage time: no checks (see :meth:`forward`)."""
        b = weights[1] if use_bias and len(weights) > 1 else None
        return F.conv2d(x, weights[0], b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            + super().extra_repr()
        )
