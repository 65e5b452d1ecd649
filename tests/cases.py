"""Every time-dependent layer and residual unit, built small, with an input it takes: the
cases the layer and unit tests run over."""

import torch
from torch import nn

import contnet
from contnet import nn as cnn


class SelfAttention(nn.Module):
    """A user's residual branch around ``nn.MultiheadAttention`` (x -> attention of x)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        h = self.norm(x)
        return self.attn(h, h, h, need_weights=False)[0]


def conv_bn_branch(channels):
    """A user's convolutional branch with a batch norm (statistics kept per cell)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.Tanh()
    )


def mlp_branch(dim):
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


#: name -> (build(n_basis, basis) -> module called as m(t, x), shape of x)
LAYERS = {
    "TimeLinear": (lambda K, b: cnn.TimeLinear(4, 4, n_basis=K, basis=b), (3, 4)),
    "TimeConv1d": (lambda K, b: cnn.TimeConv1d(3, 3, 3, n_basis=K, basis=b), (2, 3, 6)),
    "TimeConv2d": (lambda K, b: cnn.TimeConv2d(3, 3, 3, n_basis=K, basis=b), (2, 3, 4, 5)),
    "TimeConv3d": (lambda K, b: cnn.TimeConv3d(2, 2, 3, n_basis=K, basis=b), (2, 2, 3, 4, 3)),
    "TimeLayerNorm": (lambda K, b: cnn.TimeLayerNorm(4, n_basis=K, basis=b), (3, 2, 4)),
    "TimeGroupNorm": (lambda K, b: cnn.TimeGroupNorm(2, 4, n_basis=K, basis=b), (3, 4, 5)),
    "TimeBatchNorm1d": (lambda K, b: cnn.TimeBatchNorm1d(3, K), (4, 3, 5)),
    "TimeBatchNorm2d": (lambda K, b: cnn.TimeBatchNorm2d(3, K), (4, 3, 2, 3)),
    "TimeBatchNorm3d": (lambda K, b: cnn.TimeBatchNorm3d(2, K), (3, 2, 2, 2, 3)),
}

#: name -> (build(n_basis, basis) -> a unit (a rate of x's shape), shape of x)
UNITS = {
    "MLPUnit": (lambda K, b: contnet.MLPUnit(4, hidden=6, n_basis=K, basis=b), (2, 3, 4)),
    "TransformerUnit": (
        lambda K, b: contnet.TransformerUnit(4, 2, mlp_ratio=1.5, n_basis=K, basis=b),
        (2, 3, 4),
    ),
    "BottleneckUnit": (
        lambda K, b: contnet.BottleneckUnit(4, bottleneck=2, n_basis=K, basis=b),
        (2, 4, 3, 3),
    ),
    "BottleneckUnit-post": (
        lambda K, b: contnet.BottleneckUnit(
            4, bottleneck=2, n_basis=K, basis=b, norm=None, preact=False, act="tanh"
        ),
        (2, 4, 3, 3),
    ),
    "time_dependent-mlp": (
        lambda K, b: contnet.time_dependent(mlp_branch(4), n_basis=K, basis=b),
        (3, 4),
    ),
    "time_dependent-conv-bn": (
        lambda K, b: contnet.time_dependent(conv_bn_branch(3), n_basis=K, basis=b),
        (2, 3, 4, 4),
    ),
    "time_dependent-attention": (
        lambda K, b: contnet.time_dependent(SelfAttention(4, 2), n_basis=K, basis=b),
        (2, 3, 4),
    ),
}


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter and running statistic (nothing at its neutral
    initial value: norms' ones and zeros would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return module


def state(shape, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)
