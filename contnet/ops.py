"""The fused ops of contnet.

Each op has a typed Python wrapper here, a pure-PyTorch reference (``*_reference``), and,
when the extension ``contnet._C`` is built, C++/CUDA kernels registered as
``torch.ops.contnet.*`` with autograd and fake (meta) implementations registered below, so
``torch.compile(fullgraph=True)`` traces through them. Without the extension, or under
:func:`use_reference`, the wrappers run the references (one warning when the extension is
missing).

Ops:

- :func:`rk_combine` -- stage accumulation ``out = x + h * sum_j c_j k_j``, any number of
  same-shaped terms in one pass over memory, coefficients by value.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence

import torch

__all__ = [
    "backend",
    "extension_loaded",
    "rk_combine",
    "rk_combine_reference",
    "use_reference",
]

_EXT_ERROR: Exception | None = None
try:
    from . import _C  # noqa: F401  (importing registers torch.ops.contnet.*)
except ImportError as err:  # pragma: no cover - exercised only without the build
    _EXT_ERROR = err

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_force_reference = os.environ.get("CONTNET_BACKEND", "") == "reference"
_warned_missing = False


def extension_loaded() -> bool:
    """Whether ``contnet._C`` was imported (its kernels are registered)."""
    return _EXT_ERROR is None


def _has_kernel(op: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return (
        key is not None
        and extension_loaded()
        and torch._C._dispatch_has_kernel_for_dispatch_key(f"contnet::{op}", key)
    )


def backend() -> str:
    """Which implementation the ops run, in words, e.g. ``"extension (cpu, cuda)"``."""
    if not extension_loaded():
        return f"reference (contnet._C is not built: {_EXT_ERROR})"
    if _force_reference:
        return "reference (forced)"
    kinds = [d for d in ("cpu", "cuda") if _has_kernel("rk_combine", d)]
    return f"extension ({', '.join(kinds)})"


@contextlib.contextmanager
def use_reference(enabled: bool = True):
    """Within the block, run the pure-PyTorch references instead of the extension."""
    global _force_reference
    before, _force_reference = _force_reference, enabled
    try:
        yield
    finally:
        _force_reference = before


def _use_extension(op: str, t: torch.Tensor) -> bool:
    global _warned_missing
    if _force_reference:
        return False
    if not extension_loaded():
        if not _warned_missing:
            _warned_missing = True
            warnings.warn(
                f"contnet._C is not built ({_EXT_ERROR}); using the pure-PyTorch reference ops",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return _has_kernel(op, t.device.type)


# ---------------------------------------------------------------------------- checks
def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_terms(x, terms, coeffs, names=("x", "terms", "coeffs")) -> None:
    xn, tn, cn = names
    _check_tensor(x, xn)
    if isinstance(terms, torch.Tensor) or not isinstance(terms, Sequence):
        raise TypeError(f"{tn} must be a sequence of tensors, got {type(terms).__name__}")
    if len(terms) != len(coeffs):
        raise ValueError(
            f"{tn} and {cn} must have the same length, got {len(terms)} and {len(coeffs)}"
        )
    for j, k in enumerate(terms):
        _check_tensor(k, f"{tn}[{j}]")
        if k.shape != x.shape:
            raise ValueError(
                f"{tn}[{j}] must have the shape of {xn} {tuple(x.shape)}, got {tuple(k.shape)}"
            )
        if k.dtype != x.dtype:
            raise TypeError(f"{tn}[{j}] must have the dtype of {xn} ({x.dtype}), got {k.dtype}")
        if k.device != x.device:
            raise ValueError(
                f"{tn}[{j}] must be on the device of {xn} ({x.device}), got {k.device}"
            )


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ---------------------------------------------------------------------------- rk_combine
def rk_combine_reference(
    x: torch.Tensor, terms: Sequence[torch.Tensor], h: float, coeffs: Sequence[float]
) -> torch.Tensor:
    """Pure-PyTorch ``x + h * sum_j coeffs[j] * terms[j]``, accumulated in float for
    float16/bfloat16 (as the kernels do)."""
    acc = _opmath(x.dtype)
    out = x.to(acc)
    for k, c in zip(terms, coeffs):
        out = out + (h * float(c)) * k.to(acc)
    return out.to(x.dtype)


def rk_combine(
    x: torch.Tensor, terms: Sequence[torch.Tensor], h: float, coeffs: Sequence[float]
) -> torch.Tensor:
    """Stage accumulation ``out = x + h * sum_j coeffs[j] * terms[j]``.

    ``terms`` are tensors of the shape, dtype and device of ``x`` (any strides; the output
    takes ``x``'s memory format); ``h`` and ``coeffs`` are Python numbers. One pass over
    memory reads every input once and writes the output once. Terms with a zero
    coefficient are skipped. Differentiable in ``x`` and ``terms``.
    """
    coeffs = [float(c) for c in coeffs]
    _check_terms(x, terms, coeffs)
    h = float(h)
    kept = [(k, c) for k, c in zip(terms, coeffs) if c != 0.0 and h != 0.0]
    terms, coeffs = [k for k, _ in kept], [c for _, c in kept]
    if _use_extension("rk_combine", x):
        return torch.ops.contnet.rk_combine(x, terms, h, coeffs)
    return rk_combine_reference(x, terms, h, coeffs)


if extension_loaded():

    @torch.library.register_fake("contnet::rk_combine")
    def _rk_combine_fake(x, terms, h, coeffs):
        return torch.empty_like(x)

    @torch.library.register_fake("contnet::rk_combine_backward")
    def _rk_combine_backward_fake(grad, h, coeffs):
        return [torch.empty_like(grad) for _ in coeffs]

    def _rk_combine_setup(ctx, inputs, output):
        _, _, ctx.h, ctx.coeffs = inputs

    def _rk_combine_backward(ctx, grad):
        return grad, torch.ops.contnet.rk_combine_backward(grad, ctx.h, ctx.coeffs), None, None

    torch.library.register_autograd(
        "contnet::rk_combine", _rk_combine_backward, setup_context=_rk_combine_setup
    )

    def _rk_combine_backward_setup(ctx, inputs, output):
        _, ctx.h, ctx.coeffs = inputs

    def _rk_combine_double_backward(ctx, grads):
        # the backward is linear in grad: its gradient is sum_j h c_j grads[j]
        kept = [(g, c) for g, c in zip(grads, ctx.coeffs) if g is not None]
        if not kept:
            return None, None, None
        gs, cs = [g for g, _ in kept], [c for _, c in kept]
        return torch.ops.contnet.rk_combine(torch.zeros_like(gs[0]), gs, ctx.h, cs), None, None

    torch.library.register_autograd(
        "contnet::rk_combine_backward",
        _rk_combine_double_backward,
        setup_context=_rk_combine_backward_setup,
    )
