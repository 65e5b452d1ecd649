"""``rk_combine``: stage accumulation ``x + h * sum_j c_j k_j`` in one pass over memory."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import extension
from .checks import MAX_TERMS, cast, check_h, check_like, check_tensor, common_dtype, vanishes
from .reference import rk_combine_reference


def combine_unchecked(x, terms, h: float, coeffs) -> torch.Tensor:
    dtype = common_dtype(x, terms)
    if dtype is not None:
        x, terms = cast(x, dtype), [cast(t, dtype) for t in terms]
    if extension.use_extension("rk_combine", x):
        return torch.ops.contnet.rk_combine.default(x, terms, h, coeffs)
    return rk_combine_reference(x, terms, h, coeffs)


def combine_learned_unchecked(x, terms, h: float, coeffs: torch.Tensor) -> torch.Tensor:
    dtype = common_dtype(x, terms) or x.dtype
    x, terms, coeffs = cast(x, dtype), [cast(t, dtype) for t in terms], cast(coeffs, dtype)
    if extension.use_extension("rk_combine_learned", x):
        return torch.ops.contnet.rk_combine_learned.default(x, terms, h, coeffs)
    return rk_combine_reference(x, terms, h, coeffs)


def rk_combine(x: torch.Tensor, terms: Sequence[torch.Tensor], h: float, coeffs) -> torch.Tensor:
    """Stage accumulation ``out = x + h * sum_j coeffs[j] * terms[j]``.

    ``terms``: tensors of the shape, dtype and device of ``x`` (any strides; the output
    takes ``x``'s memory format). ``coeffs``: Python numbers (fixed tableau entries,
    passed by value; terms with a zero coefficient are skipped) or a 1-d tensor on ``x``'s
    device (learned coefficients, which get gradients ``h <terms[j], grad>``). One pass over
    memory reads every input once and writes the output once.
    """
    check_tensor(x, "x")
    check_like(terms, "terms", x, "x")
    h = check_h(h)
    if isinstance(coeffs, torch.Tensor):
        check_tensor(coeffs, "coeffs")
        if coeffs.dim() != 1 or coeffs.shape[0] != len(terms):
            raise ValueError(
                f"coeffs must be a 1-d tensor with one value per term ({len(terms)}), got shape {tuple(coeffs.shape)}"
            )
        if coeffs.device != x.device:
            raise ValueError(f"coeffs must be on the device of x ({x.device}), got {coeffs.device}")
        if len(terms) > MAX_TERMS:
            raise ValueError(
                f"terms must hold at most {MAX_TERMS} tensors with learned coefficients"
            )
        if extension.use_extension("rk_combine_learned", x):
            return torch.ops.contnet.rk_combine_learned(x, list(terms), h, coeffs)
        return rk_combine_reference(x, terms, h, coeffs)
    coeffs = [float(c) for c in coeffs]
    if len(terms) != len(coeffs):
        raise ValueError(
            f"terms and coeffs must have the same length, got {len(terms)} and {len(coeffs)}"
        )
    kept = [(k, c) for k, c in zip(terms, coeffs) if not vanishes(h * c, x.dtype)]
    terms, coeffs = [k for k, _ in kept], [c for _, c in kept]
    if extension.use_extension("rk_combine", x):
        return torch.ops.contnet.rk_combine(x, terms, h, coeffs)
    return rk_combine_reference(x, terms, h, coeffs)
