"""Argument checks shared by the time-dependent layers and units: each names the argument
and what was expected."""

from __future__ import annotations

import math
import numbers

import torch


def positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def real(v, name: str) -> float:
    """A finite real number (a Python or NumPy number or a one-element tensor, not a bool)
    as a float."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point():
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return float(v)


def positive_float(v, name: str) -> float:
    v = real(v, name)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


_SPATIAL = {0: "", 1: ", L", 2: ", H, W", 3: ", D, H, W"}


def check_state(x, channels: int, what: str = "channels", dims: int = 2) -> None:
    """``x`` must be a floating-point ``(N, channels, *spatial)`` tensor with ``dims``
    spatial dimensions (``what`` names the setting ``channels`` comes from, for the
    message)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor, got {got}")
    if x.dim() != dims + 2 or x.shape[1] != channels:
        raise ValueError(
            f"x must have shape (N, {channels}{_SPATIAL[dims]}) for {what}={channels}, "
            f"got {tuple(x.shape)}"
        )


def check_features(x, features: int, what: str) -> None:
    """``x`` must be a floating-point tensor whose last dimension is ``features``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor, got {got}")
    if x.dim() < 1 or x.shape[-1] != features:
        raise ValueError(
            f"x must have shape (..., {features}) for {what}={features}, got {tuple(x.shape)}"
        )


def check_time(t) -> float:
    if isinstance(t, torch.Tensor) or isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a Python float, got {type(t).__name__}")
    if not math.isfinite(t):
        raise ValueError(f"t must be finite, got {t}")
    return float(t)
