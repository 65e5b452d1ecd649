"""``ContinuousNet``: a CIFAR-style network of continuous blocks joined by downsampling
residual blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import schemes as schemes_lib
from ..block import ContinuousBlock
from ..nn import ACTIVATIONS, NORMS, ConvUnit, check_state
from ..nn.checks import positive_int
from .network import Network


class Stitch(nn.Module):
    """Downsampling residual block between stages (pre-activation):
    ``y = act(norm1(x)); out = shortcut(y) + conv2(act(norm2(conv1(y))))`` with a stride-2
    3x3 ``conv1`` and a stride-2 1x1 ``shortcut``. Not time dependent."""

    def __init__(self, in_channels: int, out_channels: int, *, act="relu", norm="batch", stride=2):
        super().__init__()
        bias = norm is None
        self.act = ACTIVATIONS[act]
        self.norm1 = nn.BatchNorm2d(in_channels) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.norm2 = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=bias)

    def forward(self, x):
        y = self.act(self.norm1(x))
        return self.shortcut(y) + self.conv2(self.act(self.norm2(self.conv1(y))))


class ContinuousNet(Network):
    """ContinuousNet for image classification (CIFAR-style).

    ``stem`` (3x3 conv) -> for each width: a :class:`ContinuousBlock` of a
    :class:`ConvUnit` (``preact`` residual unit, ``norm``, ``act``, weights in ``basis``
    with ``n_basis`` nodes), joined by downsampling :class:`Stitch` blocks -> norm, act,
    global average pooling -> linear head. Input ``(N, in_channels, H, W)``; output logits
    ``(N, num_classes)``; ``stochastic_depth``: every block's (linear in depth, per
    sample). Every block's ``scheme``/``n_steps`` can be changed afterwards
    (see :meth:`set_manifestation`). ``config`` holds the constructor arguments.
    """

    _positional = ("in_channels", "num_classes", "widths", "n_basis")

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths=(16, 32, 64),
        n_basis: int = 1,
        *,
        basis: str = "piecewise_constant",
        scheme="rk4",
        n_steps: int | None = None,
        act: str = "relu",
        norm: str | None = "batch",
        preact: bool = True,
        backprop: str = "direct",
        stochastic_depth: float = 0.0,
    ):
        super().__init__()
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise TypeError(f"widths must be a sequence of ints, got {type(widths).__name__}")
        widths = tuple(widths)
        if not widths:
            raise ValueError("widths must name at least one stage width")
        for i, w in enumerate(widths):
            positive_int(w, f"widths[{i}]")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
        self.config = {
            "in_channels": positive_int(in_channels, "in_channels"),
            "num_classes": positive_int(num_classes, "num_classes"),
            "widths": list(widths),
            "n_basis": n_basis,
            "basis": basis,
            "scheme": schemes_lib.name_of(scheme),
            "n_steps": n_steps,
            "act": act,
            "norm": norm,
            "preact": preact,
            "backprop": backprop,
            "stochastic_depth": stochastic_depth,
        }
        self.act = ACTIVATIONS.get(act)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=norm is None)
        unit = {"n_basis": n_basis, "basis": basis, "act": act, "norm": norm, "preact": preact}
        self.stages = nn.ModuleList(
            ContinuousBlock(
                ConvUnit(w, **unit),
                scheme=scheme,
                n_steps=n_steps,
                backprop=backprop,
                stochastic_depth=stochastic_depth,
            )  # fmt: skip
            for w in widths
        )
        self.stitches = nn.ModuleList(
            Stitch(a, b, act=act, norm=norm) for a, b in zip(widths[:-1], widths[1:])
        )
        self.norm = nn.BatchNorm2d(widths[-1]) if norm else nn.Identity()
        self.head = nn.Linear(widths[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.stages):
            if i:
                x = self.stitches[i - 1](x)
            x = block(x)
        return self.act(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_state(x, self.config["in_channels"], "in_channels")
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
