"""Argument checks of the op wrappers (the kernels check again in C++, ``csrc/checks.cpp``),
and the dtype and layout rules the wrappers, the references and the fake kernels share
with the kernels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


MAX_OUTPUTS = 3


MAX_TERMS = 8


def check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def check_list(ts, name: str) -> None:
    if isinstance(ts, torch.Tensor) or not isinstance(ts, Sequence):
        raise TypeError(f"{name} must be a sequence of tensors, got {type(ts).__name__}")


def check_like(ts, name: str, ref: torch.Tensor, ref_name: str) -> None:
    check_list(ts, name)
    for j, k in enumerate(ts):
        check_tensor(k, f"{name}[{j}]")
        if k.shape != ref.shape:
            raise ValueError(
                f"{name}[{j}] must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(k.shape)}"
            )
        if k.dtype != ref.dtype:
            raise TypeError(
                f"{name}[{j}] must have the dtype of {ref_name} ({ref.dtype}), got {k.dtype}"
            )
        if k.device != ref.device:
            raise ValueError(
                f"{name}[{j}] must be on the device of {ref_name} ({ref.device}), got {k.device}"
            )


def check_h(h) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"h must be a Python number, got {type(h).__name__}")
    return float(h)


def opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def vanishes(hc: float, dtype: torch.dtype) -> bool:
    """Whether the step coefficient ``hc`` rounds to zero in the kernels' accumulation type
    for ``dtype`` (float32 below float64); such a term is skipped, so a non-finite operand
    with a zero coefficient has no effect."""
    return hc == 0.0 or (opmath(dtype) != torch.float64 and abs(hc) <= 2.0**-150)


def dense_format(t: torch.Tensor) -> torch.memory_format:
    """The layout the flat kernels use (mirrors csrc/include/contnet/layout.h)."""
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def node_major_strides(t: torch.Tensor):
    """basis_interp's output strides for a node stack ``t`` (as its kernels lay them out):
    ``t``'s own, dim 0 of stride ``M = t[0].numel()``, when each node is one dense block of
    ``M`` elements at offset ``k * M`` in one layout for all (e.g. channels_last filter
    banks); else None (the output is contiguous)."""
    if t.dim() < 1:
        return None
    m = math.prod(t.shape[1:])
    if t.shape[0] != 1 and t.stride(0) != m:
        return None
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride()[1:], t.shape[1:]) if sz != 1):
        if stride != expected:
            return None
        expected *= size
    return (m,) + tuple(t.stride()[1:])


def empty_dense(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device).contiguous(
        memory_format=dense_format(t)
    )


# Unchecked entry points for callers inside contnet whose arguments are consistent by
# construction (the integrator): no Python-side validation, coefficients already floats
# without zeros. The kernels still check their inputs. Mixed dtypes -- as under
# torch.autocast, where convolutions return half precision while the state stays float32
# -- are promoted to the widest, as autocast does for pointwise ops.
def common_dtype(first, others):
    """The dtype ``first`` and ``others`` (None allowed) promote to, or None when they all
    have ``first``'s (the common case: no promotion to compute)."""
    dtype, mixed = first.dtype, False
    for t in others:
        if t is not None and t.dtype != dtype:
            dtype, mixed = torch.promote_types(dtype, t.dtype), True
    return dtype if mixed else None


def cast(t, dtype):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def bias_view(bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return bias.view((1, -1) + (1,) * (y.dim() - 2))
