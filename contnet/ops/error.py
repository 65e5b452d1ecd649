"""``rk_step_error``: an adaptive step's new state, its embedded error and the per-sample
scaled error norm in one pass over memory."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import extension
from .checks import MAX_TERMS, check_h, check_like, check_tensor
from .reference import rk_step_error_reference


def error_unchecked(x, terms, h: float, b, e, rtol: float, atol: float, x_next=None):
    """:func:`rk_step_error` for callers whose arguments are consistent by construction (the
    integrator): no Python-side validation; a 0-d state is taken as one sample."""
    if x.dim() == 0:
        x, terms = x.reshape(1), [k.reshape(1) for k in terms]
        x_next = None if x_next is None else x_next.reshape(1)
        out, sq = error_unchecked(x, terms, h, b, e, rtol, atol, x_next)
        return out.reshape(()), sq
    if extension.use_extension("rk_step_error", x):
        if x_next is None:
            return torch.ops.contnet.rk_step_error.default(x, terms, h, b, e, rtol, atol)
        return x_next, torch.ops.contnet.rk_error_norm.default(x, x_next, terms, h, e, rtol, atol)
    return rk_step_error_reference(x, terms, h, b, e, rtol, atol, x_next)


def _coefficients(values, name: str, n: int) -> list[float]:
    values = [float(c) for c in values]
    if len(values) != n:
        raise ValueError(f"terms and {name} must have the same length, got {n} and {len(values)}")
    if not all(math.isfinite(c) for c in values):
        raise ValueError(f"{name} must be finite, got {values}")
    return values


def rk_step_error(
    x: torch.Tensor,
    terms: Sequence[torch.Tensor],
    h: float,
    b,
    e,
    rtol: float,
    atol: float,
    x_next: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An embedded pair's step from ``x`` with rates ``terms`` (``k_j``) and step ``h``:

    - ``x_next = x + h sum_j b_j k_j`` (or ``x_next`` as given: a first-same-as-last pair
      rates ``x_next`` before it has its last ``k``);
    - ``err = h sum_j e_j k_j`` with ``e = b - bhat`` (never written out);
    - ``sq[s]``: the mean over sample ``s`` (dim 0) of
      ``(err / (rtol max(|x|, |x_next|) + atol))**2``, a zero error counting as zero.

    Returns ``(x_next, sq)``; ``sq`` is float64 for a float64 state and float32 otherwise,
    on the state's device (nothing is read back to the host). The root of ``sq`` is each
    sample's error size; the root of its mean, the whole batch's (torchdiffeq's norm). One
    pass over memory reads every operand once and writes ``x_next`` once; terms with a zero
    (or underflowing) coefficient are skipped in that sum. At most 8 terms (the stages of
    one step of the pairs: ``dopri5`` and ``tsit5`` have 7). Differentiable.
    """
    check_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError(
            "x must have a batch dimension (dim 0): the error norm is taken per sample, got a 0-d tensor"
        )
    check_like(terms, "terms", x, "x")
    h = check_h(h)
    if not math.isfinite(h):
        raise ValueError(f"h must be finite, got {h}")
    if len(terms) > MAX_TERMS:
        raise ValueError(f"terms must hold at most {MAX_TERMS} tensors (the stages of one step)")
    e = _coefficients(e, "e", len(terms))
    if x_next is None:
        b = _coefficients(b, "b", len(terms))
    else:
        check_tensor(x_next, "x_next")
        if x_next.shape != x.shape or x_next.dtype != x.dtype or x_next.device != x.device:
            raise ValueError(
                f"x_next must have the shape, dtype and device of x ({tuple(x.shape)}, {x.dtype}, "
                f"{x.device}), got {tuple(x_next.shape)}, {x_next.dtype}, {x_next.device}"
            )
    for name, v in (("rtol", rtol), ("atol", atol)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not (math.isfinite(v) and v >= 0)
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return error_unchecked(x, list(terms), h, b, e, float(rtol), float(atol), x_next)
