"""Corrupted test images in the manner of MNIST-C and CIFAR-10-C (Hendrycks & Dietterich
2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"):
noises, blur, shift, rotation, contrast and occlusion, each at 5 severities, made on the
fly and deterministically from a seed (nothing is downloaded).

Every corruption maps images with pixels in ``[0, 1]`` (``(N, C, H, W)``) to images in
``[0, 1]`` of the same shape; sizes (blur width, shift, occlusion) scale with the image
side, so that 8x8 digits and 32x32 CIFAR images are corrupted alike. Severity 1 is mild,
5 severe: the mean change of the pixels grows with the severity.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F

__all__ = ["CORRUPTIONS", "SEVERITIES", "VERSION", "corrupt", "corruption_table"]

SEVERITIES = (1, 2, 3, 4, 5)

#: the version of the corrupted images: the same images for a given seed within a version,
#: recorded in every table; raised with any change to what a corruption draws or computes
#: (tests/test_corruptions.py pins the images of this version)
VERSION = 1


def _gaussian_noise(x, s, g):
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1]
    return x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)


def _shot_noise(x, s, g):
    rate = (60.0, 25.0, 12.0, 5.0, 3.0)[s - 1]  # photons at full intensity
    return torch.poisson(x * rate, generator=g) / rate


def _impulse_noise(x, s, g):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]
    u = torch.rand(x.shape, generator=g, dtype=x.dtype)
    salt = torch.rand(x.shape, generator=g, dtype=x.dtype) < 0.5
    hit = u < amount
    return torch.where(hit, salt.to(x.dtype), x)


def _blur(x, s, g):
    sigma = (0.4, 0.6, 0.8, 1.0, 1.3)[s - 1] * x.shape[-1] / 8  # pixels of an 8x8 image
    r = max(1, math.ceil(2.5 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(
        F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c
    )
    return F.conv2d(
        F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )


def _warp(x, theta):
    """``x`` resampled through the affine maps ``theta`` (N, 2, 3), bilinear, zeros outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _shift(x, s, g):
    frac = (0.06, 0.1, 0.14, 0.18, 0.24)[s - 1]  # of the image side, in a random direction
    angle = 2 * math.pi * torch.rand(len(x), generator=g, dtype=x.dtype)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * frac * torch.cos(angle)  # affine_grid spans [-1, 1]: 2 per side
    theta[:, 1, 2] = 2 * frac * torch.sin(angle)
    return _warp(x, theta)


def _rotate(x, s, g):
    degrees = (8.0, 15.0, 22.0, 30.0, 40.0)[s - 1]
    sign = torch.where(torch.rand(len(x), generator=g) < 0.5, -1.0, 1.0).to(x.dtype)
    a = sign * math.radians(degrees)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _warp(x, theta)


def _contrast(x, s, g):
    c = (0.6, 0.45, 0.3, 0.2, 0.1)[s - 1]
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def _occlusion(x, s, g):
    side = (0.15, 0.25, 0.375, 0.5, 0.6)[s - 1]  # of the image side
    n, _, h, w = x.shape
    ph, pw = max(1, round(side * h)), max(1, round(side * w))
    # a square around a random centre (the same at every severity: larger patches cover
    # the smaller ones), cut at the image's edges
    cy = torch.rand(n, generator=g) * h
    cx = torch.rand(n, generator=g) * w
    top, left = (cy - ph / 2).floor().view(n, 1, 1), (cx - pw / 2).floor().view(n, 1, 1)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ph) & (cols >= left) & (cols < left + pw)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


#: name -> corruption(x in [0, 1], severity 1..5, generator) -> x (then clipped to [0, 1])
CORRUPTIONS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _blur,
    "shift": _shift,
    "rotate": _rotate,
    "contrast": _contrast,
    "occlusion": _occlusion,
}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``x`` (images ``(N, C, H, W)`` with pixels in ``[0, 1]``) under corruption ``name``
    at ``severity`` (1-5), clipped to ``[0, 1]``. The same ``x``, ``name``, ``severity``
    and ``seed`` give the same images on every run and machine: the random draws come from
    a CPU generator seeded by ``name`` and ``seed``, the same at every severity (the same
    noise, direction or patch, stronger), so that a higher severity changes more."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {list(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {list(SEVERITIES)}, got {severity!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError("x must be a floating-point (N, C, H, W) tensor of pixels in [0, 1]")
    key = zlib.crc32(f"{name}/{int(seed)}".encode())
    g = torch.Generator().manual_seed(key)
    out = CORRUPTIONS[name](x.detach().cpu(), severity, g)
    return out.clamp(0.0, 1.0).to(device=x.device, dtype=x.dtype)


@torch.no_grad()
def corruption_table(evaluate, x_pixels, y, *, names=None, seed: int = 0) -> dict:
    """Accuracy under every corruption and severity: ``evaluate(x_pixels, y) -> accuracy``
    (in [0, 1]) on the clean images and on each corrupted copy. Returns ``{"clean": a,
    "accuracy": {name: [a per severity]}, "mean_corruption_accuracy": mean of them all,
    "relative": {name: mean over severities / clean}, "seed": seed, "version":
    VERSION}``."""
    names = list(CORRUPTIONS) if names is None else list(names)
    clean = float(evaluate(x_pixels, y))
    acc = {
        name: [float(evaluate(corrupt(x_pixels, name, s, seed), y)) for s in SEVERITIES]
        for name in names
    }
    every = [a for row in acc.values() for a in row]
    return {
        "clean": clean,
        "accuracy": acc,
        "mean_corruption_accuracy": sum(every) / len(every),
        "relative": {n: sum(r) / len(r) / clean if clean else 0.0 for n, r in acc.items()},
        "severities": list(SEVERITIES),
        "seed": seed,
        "version": VERSION,
    }
