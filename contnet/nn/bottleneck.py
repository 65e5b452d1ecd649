"""``BottleneckUnit``: the 1x1-3x3-1x1 residual unit of ResNet-50-style stages."""

from __future__ import annotations

import torch

from .checks import check_state, positive_int, real
from .conv import TimeConv2d
from .dispatch import dispatch_free
from .norm import TimeBatchNorm2d
from .units import ACTIVATIONS, NORMS, TimeUnit, check_choice


class BottleneckUnit(TimeUnit):
    """The bottleneck residual unit: ``channels -> bottleneck`` (1x1), ``bottleneck ->
    bottleneck`` (3x3, ``groups``), ``bottleneck -> channels`` (1x1), time-dependent.

    - ``preact=True`` (the pre-activation form of ResNetV2 and timm's ``PreActBottleneck``):
      ``R = scale * conv3(act(n3(conv2(act(n2(conv1(act(n1(x)))))))))``
    - ``preact=False``: ``R = scale * act(n3(conv3(act(n2(conv2(act(n1(conv1(x))))))))))``

    ``bottleneck`` defaults to ``channels // 4``. ``norm``: None or ``"batch"``
    (:class:`TimeBatchNorm2d`, one cell per cell of the weight basis); convolutions carry
    a bias only without norm. The tail after ``conv3`` is fused with the stage update where
    it is ``scale * act(y + bias)`` (``preact=True``, or no norm).
    """

    _weight_layers = ("conv1", "conv2", "conv3")
    #: a block runs it in channels_last on the CPU whatever the input's layout
    channels_last_on_cpu = True

    def __init__(
        self,
        channels: int,
        *,
        bottleneck: int | None = None,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        act: str = "relu",
        norm: str | None = "batch",
        preact: bool = True,
        groups: int = 1,
        scale: float = 1.0,
        bias: bool | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.channels = positive_int(channels, "channels")
        default = max(1, channels // 4)
        self.bottleneck = default if bottleneck is None else positive_int(bottleneck, "bottleneck")
        self.act_name = check_choice(act, ACTIVATIONS, "act")
        self.norm_name = check_choice(norm, NORMS, "norm")
        self.act, self.preact = ACTIVATIONS[act], bool(preact)
        self.scale = real(scale, "scale")
        c, b = self.channels, self.bottleneck
        bias = norm is None if bias is None else bool(bias)
        conv = {"n_basis": n_basis, "basis": basis, "bias": bias, "device": device, "dtype": dtype}
        self.conv1 = TimeConv2d(c, b, 1, **conv)
        self.conv2 = TimeConv2d(b, b, 3, groups=positive_int(groups, "groups"), **conv)
        self.conv3 = TimeConv2d(b, c, 1, **conv)
        self.norm1 = self.norm2 = self.norm3 = None
        if norm == "batch":
            cells, factory = self.conv1.basis.n_cells, {"device": device, "dtype": dtype}
            sizes = (c, b, b) if preact else (b, b, c)
            self.norm1, self.norm2, self.norm3 = (
                TimeBatchNorm2d(n, cells, **factory) for n in sizes
            )

    def _na(self, norm, t, x):
        """``act(norm(x))``."""
        return self.act(x if norm is None else norm(t, x))

    def _y(self, t, x, w):
        """Everything up to conv3's output, without conv3's bias."""
        check_state(x, self.channels, "channels")
        if self.preact:
            y = self.layer("conv1", t, self._na(self.norm1, t, x), w)
            y = self.layer("conv2", t, self._na(self.norm2, t, y), w)
            return self.layer("conv3", t, self._na(self.norm3, t, y), w, use_bias=False)
        y = self._na(self.norm1, t, self.layer("conv1", t, x, w))
        y = self._na(self.norm2, t, self.layer("conv2", t, y, w))
        return self.layer("conv3", t, y, w, use_bias=False)

    def _bias3(self, t, w):
        if self.conv3.bias is None:
            return None
        return w["conv3"][1] if w is not None else self.conv3.weight_at(t)[1]

    @property
    def _tail_fusable(self) -> bool:
        return self.preact or self.norm3 is None

    @property
    def fusable(self) -> bool:
        """Whether :meth:`split` stands for calling the unit now: a tail ``scale * act(y +
        bias)``, no hooks, no subclass's own ``forward``."""
        return self._tail_fusable and self._own_forward and dispatch_free(self)

    def split(self, t: float, x: torch.Tensor, weights=None):
        """``(y, bias, act, scale)`` with ``R(t, x) = scale * act(y + bias)``, ``y`` being
        conv3's output before its bias (``preact=True`` or ``norm=None``)."""
        if not self._tail_fusable:
            raise ValueError("split needs a fusable unit (preact=True or norm=None)")
        act = "identity" if self.preact else self.act_name
        return self._y(t, x, weights), self._bias3(t, weights), act, self.scale

    def forward(self, t: float, x: torch.Tensor, weights=None) -> torch.Tensor:
        """``R(t, x)``; ``weights``: ``{"conv1": (W, b), ...}`` at ``t`` as a block looks them
        up, else each layer looks its own up."""
        y = self._y(t, x, weights)
        b3 = self._bias3(t, weights)
        if b3 is not None:
            y = y + b3.view(1, -1, 1, 1)
        if not self.preact:
            y = self._na(self.norm3, t, y)
        return y if self.scale == 1.0 else y * self.scale

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, bottleneck={self.bottleneck}, act={self.act_name}, "
            f"norm={self.norm_name}, preact={self.preact}, scale={self.scale}"
        )
