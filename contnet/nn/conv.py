"""``TimeConv1d``, ``TimeConv2d``, ``TimeConv3d``: convolutions whose weight and bias are
basis expansions in depth, one N-d implementation with the arguments of ``torch.nn.ConvNd``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import basis as basis_lib
from .checks import check_state, positive_int
from .time_dependent import TimeDependent, node_layout_like

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv_args(conv) -> tuple:
    """``(stride, padding, dilation, groups)`` of a convolution for ``F.convNd``, each tuple
    with equal entries passed as one int, which ``F.conv2d`` parses faster than a tuple
    (host time paid at every stage; bench/README.md has the figures)."""

    def arg(v):
        return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v

    return arg(conv.stride), arg(conv.padding), arg(conv.dilation), conv.groups


def _ints(v, n: int, name: str, low: int = 1) -> tuple[int, ...]:
    """``v`` (an int or ``n`` of them) as an ``n``-tuple of ints ``>= low``."""
    vs = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(vs) != n or any(isinstance(u, bool) or not isinstance(u, int) for u in vs):
        raise TypeError(f"{name} must be an int or {n} ints, got {v!r}")
    if any(u < low for u in vs):
        raise ValueError(f"{name} must be >= {low}, got {v!r}")
    return vs


class TimeConvNd(TimeDependent):
    """N-d convolution with weight ``W(t)`` and bias ``b(t)`` expanded in a basis in depth
    (see :class:`TimeConv2d`; ``dims`` is the number of spatial dimensions)."""

    _basis_tensors = ("weight", "bias")
    dims: int = 2

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
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        n = self.dims
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        self.kernel_size = _ints(kernel_size, n, "kernel_size")
        self.stride = _ints(stride, n, "stride")
        self.dilation = _ints(dilation, n, "dilation")
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {list(PADDING_MODES)}, got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        self.padding = self._padding(padding)
        K = self.basis.n_basis
        factory = {"device": device, "dtype": dtype}
        shape = (K, out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(K, out_channels, **factory)) if bias else None
        self.reset_parameters()

    def _padding(self, padding):
        """``padding`` as a tuple of ints, or ``"same"`` where the padding is uneven (an even
        dilated kernel; ``F.convNd`` pads it as ``nn.ConvNd`` does). ``"valid"`` is 0;
        ``"same"`` (and None, the default) is half of each dilated kernel."""
        n = self.dims
        if padding == "valid":
            return (0,) * n
        if padding is None or padding == "same":
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"padding='same' needs stride 1, got stride={self.stride}")
            spans = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
            if padding == "same" and any(v % 2 for v in spans):
                if self.padding_mode != "zeros":
                    raise ValueError(
                        "padding='same' with an even kernel_size needs padding_mode='zeros', "
                        f"got {self.padding_mode!r}"
                    )
                return "same"
            return tuple(v // 2 for v in spans)
        if isinstance(padding, str):
            raise ValueError(
                f"padding must be an int, {n} ints, 'same' or 'valid', got {padding!r}"
            )
        try:
            return _ints(padding, n, "padding", low=0)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"padding must be one or {n} non-negative ints, got {padding!r}"
            ) from e

    def reset_parameters(self) -> None:
        """Every node as ``nn.ConvNd`` initialises its weight and bias."""
        self._init_like_torch()

    def _apply(self, fn, recurse=True):
        # nn.Module.to(memory_format=torch.channels_last) gives every 4-d and 5-d tensor the
        # 2-d channels_last layout, which a 5-d stack of K 2-d filter banks cannot take. The
        # stack goes through its 4-d view (K * out, in, kh, kw), so each node becomes a
        # channels_last filter bank; parameter identities are kept.
        def per_filter(t):
            if t.dim() == 5:
                return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2])
            return fn(t)

        return super()._apply(per_filter if self.dims == 2 else fn, recurse)

    def _format_like(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """A refined or projected weight keeps the node layout of the one it replaces."""
        return node_layout_like(old, new)

    def weight_at(self, t: float):
        """``(W(t), b(t))``; ``b`` is None without bias. A ``piecewise_constant`` basis
        gives views of a node."""
        w = self.at(t)
        return w[0], w[1] if len(w) > 1 else None

    def forward(
        self, t: float, x: torch.Tensor, weights=None, *, use_bias: bool = True
    ) -> torch.Tensor:
        """``conv(x; W(t), b(t))``. ``weights``: the values at ``t`` of
        :meth:`basis_tensors` (``(W,)`` or ``(W, b)``), as a block precomputes them for all
        stage times; else they are looked up here.
        ``use_bias=False`` leaves the bias out (for a caller that fuses it)."""
        check_state(x, self.in_channels, "in_channels", self.dims)
        return self.apply_weights(x, self._weights(t, weights), use_bias)

    def apply_weights(self, x: torch.Tensor, weights, use_bias: bool = True) -> torch.Tensor:
        """``conv(x; W, b)`` with ``weights`` ``(W,)`` or ``(W, b)`` (``b`` may be None)
        already taken at the stage time: no checks (see :meth:`forward`)."""
        b = weights[1] if use_bias and len(weights) > 1 else None
        padding = self.padding
        if self.padding_mode != "zeros":
            pad = [p for v in reversed(padding) for p in (v, v)]
            x, padding = F.pad(x, pad, mode=self.padding_mode), 0
        return _CONV[self.dims](x, weights[0], b, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        mode = "" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode}"
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}{mode}, "
            + super().extra_repr()
        )


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class TimeConv1d(TimeConvNd):
    """1-d convolution in depth: ``weight`` ``(K, out, in // groups, k)``, ``x`` of shape
    ``(N, C_in, L)``; otherwise as :class:`TimeConv2d`."""

    dims = 1


class TimeConv2d(TimeConvNd):
    """2-d convolution with weight ``W(t)`` and bias ``b(t)`` expanded in a basis in depth.

    ``weight``: ``(K, out_channels, in_channels // groups, kh, kw)``; ``bias``:
    ``(K, out_channels)``. Called as ``conv(t, x)`` with ``x`` of shape ``(N, C_in, H, W)``.
    The arguments of ``nn.Conv2d`` (``stride``, ``padding`` including ``"same"`` and
    ``"valid"``, ``dilation``, ``groups``, ``bias``, ``padding_mode``), except that
    ``padding`` defaults to half of each kernel ("same" for odd kernels at stride 1), the
    size-keeping choice of a residual unit. Every node is initialised independently as
    ``nn.Conv2d`` initialises its weight.
    """

    dims = 2


class TimeConv3d(TimeConvNd):
    """3-d convolution in depth: ``weight`` ``(K, out, in // groups, kd, kh, kw)``, ``x`` of
    shape ``(N, C_in, D, H, W)``; otherwise as :class:`TimeConv2d`."""

    dims = 3
