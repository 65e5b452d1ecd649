"""Residual units on features in the last dimension: the pre-norm MLP and the parallel
transformer unit ``Attn_t(LN_t(x)) + MLP_t(LN_t(x))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_features, positive_float, positive_int, real
from .dispatch import dispatch_free
from .linear import TimeLinear
from .norm import TimeLayerNorm
from .units import ACTIVATIONS, TimeUnit, check_choice

LAYER_NORMS = (None, "layer")


class _FeatureUnit(TimeUnit):
    """What the units on ``(..., dim)`` share: the layer norm, the MLP and the tail
    ``scale * y`` (``y`` with its last bias inside the matrix product), which the
    integrator fuses with the stage update (:meth:`split`, act ``identity``, no bias)."""

    def _mlp_layers(self, dim, hidden, act, norm, factory):
        self.dim = positive_int(dim, "dim")
        self.hidden = positive_int(hidden, "hidden")
        self.act_name = check_choice(act, ACTIVATIONS, "act")
        self.act = ACTIVATIONS[act]
        self.norm_name = check_choice(norm, LAYER_NORMS, "norm")
        self.norm = TimeLayerNorm(dim, **factory) if norm == "layer" else None
        self.fc1 = TimeLinear(dim, hidden, **factory)
        self.fc2 = TimeLinear(hidden, dim, **factory)

    def _normed(self, t, x, weights):
        check_features(x, self.dim, "dim")
        return x if self.norm is None else self.layer("norm", t, x, weights)

    def _mlp(self, t, h, weights):
        return self.layer("fc2", t, self.act(self.layer("fc1", t, h, weights)), weights)

    @property
    def fusable(self) -> bool:
        """Whether :meth:`split` stands for calling the unit now: no hooks on it, no global
        module hooks, no subclass's own ``forward``."""
        return self._own_forward and dispatch_free(self)

    def split(self, t: float, x: torch.Tensor, weights=None, **kwargs):
        """``(y, None, "identity", scale)`` with ``R(t, x) = scale * y``."""
        return self._y(t, x, weights, **kwargs), None, "identity", self.scale

    def forward(self, t: float, x: torch.Tensor, weights=None, **kwargs) -> torch.Tensor:
        """``R(t, x)``; ``weights``: ``{layer name: values at t}`` as a block looks them up,
        else each layer looks its own up."""
        y = self._y(t, x, weights, **kwargs)
        return y if self.scale == 1.0 else y * self.scale


class MLPUnit(_FeatureUnit):
    """The pre-norm MLP residual unit on ``(..., dim)``:
    ``R(t, x) = scale * fc2(act(fc1(LN(x))))`` with ``hidden`` (default ``4 * dim``)
    features between the linear layers; ``norm=None`` leaves the layer norm out. Every
    layer's parameters are expansions in one basis (:class:`TimeLinear`,
    :class:`TimeLayerNorm`)."""

    _weight_layers = ("fc1", "fc2", "norm")

    def __init__(
        self,
        dim: int,
        *,
        hidden: int | None = None,
        act: str = "gelu",
        norm: str | None = "layer",
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        scale: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"n_basis": n_basis, "basis": basis, "device": device, "dtype": dtype}
        hidden = 4 * dim if hidden is None and isinstance(dim, int) else hidden
        self._mlp_layers(dim, hidden, act, norm, factory)
        self.scale = real(scale, "scale")

    def _y(self, t, x, weights):
        return self._mlp(t, self._normed(t, x, weights), weights)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden={self.hidden}, act={self.act_name}, "
            f"norm={self.norm_name}, scale={self.scale}"
        )


class TransformerUnit(_FeatureUnit):
    """The parallel transformer unit on ``(B, L, dim)``:
    ``R(t, x) = scale * (Attn_t(LN_t(x)) + MLP_t(LN_t(x)))``, one layer norm feeding
    multi-head self-attention (``heads`` heads, a fused ``qkv`` projection and ``proj``)
    and an MLP of ``mlp_ratio * dim`` hidden features. One rate, as a block integrates it;
    every parameter an expansion in one basis.

    ``mask`` (keyword, also through ``block(x, mask=...)``): an attention mask as
    ``F.scaled_dot_product_attention`` takes it, broadcastable to ``(B, heads, L, L)``:
    boolean (True: the key takes part) or additive float. ``dropout``: on the attention
    weights, in training.
    """

    _weight_layers = ("qkv", "proj", "fc1", "fc2", "norm")

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        dropout: float = 0.0,
        scale: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dim, heads = positive_int(dim, "dim"), positive_int(heads, "heads")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        hidden = max(1, round(positive_float(mlp_ratio, "mlp_ratio") * dim))
        factory = {"n_basis": n_basis, "basis": basis, "device": device, "dtype": dtype}
        self._mlp_layers(dim, hidden, act, "layer", factory)
        self.heads = heads
        self.qkv = TimeLinear(dim, 3 * dim, **factory)
        self.proj = TimeLinear(dim, dim, **factory)
        self.dropout = real(dropout, "dropout")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.scale = real(scale, "scale")

    def _y(self, t, x, weights, mask=None):
        if x.dim() != 3:
            raise ValueError(f"x must have shape (B, L, {self.dim}), got {tuple(x.shape)}")
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a tensor or None, got {type(mask).__name__}")
        h = self._normed(t, x, weights)
        B, L, D = x.shape
        qkv = self.layer("qkv", t, h, weights).view(B, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        a = a.transpose(1, 2).reshape(B, L, D)
        return self.layer("proj", t, a, weights) + self._mlp(t, h, weights)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, hidden={self.hidden}, act={self.act_name}, "
            f"dropout={self.dropout}, scale={self.scale}"
        )
