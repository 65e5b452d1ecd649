"""``ContinuousTransformer``: tokens or image patches through continuous-in-depth encoder
stages of :class:`contnet.TransformerUnit`, then a classification head."""

from __future__ import annotations

import torch
from torch import nn

from .. import schemes as schemes_lib
from ..block import ContinuousBlock
from ..nn import TransformerUnit
from ..nn.checks import positive_float, positive_int
from .network import Network


class ContinuousTransformer(Network):
    """A transformer classifier whose encoder is continuous in depth.

    Input: images ``(N, in_channels, H, W)`` with ``image_size = (H, W)``, cut into
    ``patch_size`` patches by a linear patch embedding; or, with ``vocab_size``, token ids
    ``(N, L)`` with ``L <= max_len``, embedded. A learned position embedding is added; then
    ``stages`` :class:`ContinuousBlock` s, each integrating one
    :class:`contnet.TransformerUnit` (``dim``, ``heads``, ``mlp_ratio``, weights in
    ``basis`` with ``n_basis`` nodes, ``scheme``, ``n_steps``); a layer norm, the mean over
    tokens and a linear head give logits ``(N, num_classes)``. ``forward(x, mask=None)``
    passes an attention ``mask`` to every stage; ``stochastic_depth``: every block's
    (linear in depth, per sample). ``config`` holds the constructor
    arguments (:meth:`from_config` rebuilds the model).
    """

    _positional = ("in_channels", "num_classes", "image_size")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size=8,
        *,
        patch_size: int = 2,
        vocab_size: int | None = None,
        max_len: int | None = None,
        dim: int = 64,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        stages: int = 1,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        scheme="rk4",
        n_steps: int | None = None,
        backprop: str = "direct",
        dropout: float = 0.0,
        stochastic_depth: float = 0.0,
    ):
        super().__init__()
        self.config = {
            "in_channels": positive_int(in_channels, "in_channels"),
            "num_classes": positive_int(num_classes, "num_classes"),
            "image_size": list(_pair(image_size, "image_size")),
            "patch_size": positive_int(patch_size, "patch_size"),
            "vocab_size": None if vocab_size is None else positive_int(vocab_size, "vocab_size"),
            "max_len": None if max_len is None else positive_int(max_len, "max_len"),
            "dim": positive_int(dim, "dim"),
            "heads": positive_int(heads, "heads"),
            "mlp_ratio": positive_float(mlp_ratio, "mlp_ratio"),
            "stages": positive_int(stages, "stages"),
            "n_basis": n_basis,
            "basis": basis,
            "scheme": schemes_lib.name_of(scheme),
            "n_steps": n_steps,
            "backprop": backprop,
            "dropout": dropout,
            "stochastic_depth": stochastic_depth,
        }
        self.embed, length = self._embedding()
        self.pos = nn.Parameter(torch.zeros(1, length, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        unit = {"mlp_ratio": mlp_ratio, "n_basis": n_basis, "basis": basis, "dropout": dropout}
        self.stages = nn.ModuleList(
            ContinuousBlock(
                TransformerUnit(dim, heads, **unit),
                scheme=scheme,
                n_steps=n_steps,
                backprop=backprop,
                stochastic_depth=stochastic_depth,
            )
            for _ in range(stages)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def _embedding(self) -> tuple[nn.Module, int]:
        """The token or patch embedding and the number of positions it gives."""
        c = self.config
        if c["vocab_size"] is not None:
            if c["max_len"] is None:
                raise ValueError("max_len is required with vocab_size (the positions to embed)")
            return nn.Embedding(c["vocab_size"], c["dim"]), c["max_len"]
        (h, w), p = c["image_size"], c["patch_size"]
        if h % p or w % p:
            raise ValueError(f"image_size {(h, w)} must be divisible by patch_size {p}")
        embed = nn.Conv2d(c["in_channels"], c["dim"], p, stride=p)
        return embed, (h // p) * (w // p)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, dim)``: the embedded input plus its positions."""
        c = self.config
        if c["vocab_size"] is not None:
            if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int32, torch.int64):
                raise TypeError("x must be a tensor of token ids (int64) when vocab_size is set")
            if x.dim() != 2 or x.shape[1] > c["max_len"]:
                raise ValueError(
                    f"x must have shape (N, L) with L <= max_len={c['max_len']}, got {tuple(x.shape)}"
                )
            return self.embed(x) + self.pos[:, : x.shape[1]]
        shape = (c["in_channels"], *c["image_size"])
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating-point tensor of images")
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"x must have shape (N, {', '.join(map(str, shape))}), got {tuple(x.shape)}"
            )
        return self.embed(x).flatten(2).transpose(1, 2) + self.pos

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.tokens(x)
        kw = {} if mask is None else {"mask": mask}
        for block in self.stages:
            h = block(h, **kw)
        return self.head(self.norm(h).mean(1))


def _pair(v, name: str) -> tuple[int, int]:
    vs = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(vs) != 2:
        raise ValueError(f"{name} must be an int or two ints, got {v!r}")
    return tuple(positive_int(u, name) for u in vs)
