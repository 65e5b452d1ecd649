"""``rk_epilogue``: the residual unit's tail fused with the stage updates that consume it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import extension
from .activations import ACT_CODES, ACT_FUNCS
from .checks import MAX_OUTPUTS, MAX_TERMS, cast, check_h, check_like, check_tensor, common_dtype
from .reference import rk_epilogue_reference


def epilogue_kernel(like: torch.Tensor):
    """The epilogue as a callable of :func:`epilogue_unchecked`'s arguments for tensors of
    ``like``'s device that all have one dtype (no checks, no promotion): the extension's
    op where it has a kernel for that device, else the reference. An integrator looks it
    up once per step instead of once per stage. In eager mode the op is called through
    ``contnet._C.rk_epilogue``, which reads plain arguments without torch.ops' boxing (the
    same dispatcher call; anything else goes to torch.ops); under ``torch.compile`` through
    torch.ops. The choice is made by this call: look the kernel up inside the region that
    calls it (a compiled region cannot call the eager entry)."""
    if extension.use_extension("rk_epilogue", like):
        if torch.compiler.is_compiling():
            return torch.ops.contnet.rk_epilogue.default
        return extension._C.rk_epilogue
    return rk_epilogue_reference


def epilogue_unchecked(
    y, bias, act: int, scale: float, bases, terms, h: float, coeffs, return_k: bool
):
    dtype = common_dtype(y, (bias, *bases, *terms))
    if dtype is not None:
        y, bias = cast(y, dtype), cast(bias, dtype)
        bases, terms = [cast(t, dtype) for t in bases], [cast(t, dtype) for t in terms]
    return epilogue_kernel(y)(y, bias, act, scale, bases, terms, h, coeffs, return_k)


def rk_epilogue(
    y: torch.Tensor,
    bias: torch.Tensor | None,
    act,
    scale: float,
    bases: Sequence[torch.Tensor],
    terms: Sequence[torch.Tensor],
    h: float,
    coeffs: Sequence[float],
    return_k: bool = False,
) -> list[torch.Tensor]:
    """The unit's tail fused with the stage updates that consume it::

        k      = scale * act(y + bias[channel])            (channel: dim 1 of y)
        out[o] = bases[o] + h * (sum_j C[o][j] terms[j] + C[o][T] k),   T = len(terms)

    ``coeffs`` is ``C`` row-major, ``len(bases) x (T + 1)``; a coefficient whose ``h * C``
    is zero in the accumulation type is skipped, its operand (a term, or ``k``) not read
    for that output, so a non-finite value there has no effect. ``act``: a name or code of
    :data:`ACT_CODES`, computed as ``torch.nn.functional``'s activation (gelu in its exact
    erf form). Returns ``[out_0, ..., out_{M-1}]`` and ``k`` last if ``return_k``.
    At most 3 bases and 8 terms. Differentiable in ``y``, ``bias``, ``bases``, ``terms``.
    """
    check_tensor(y, "y")
    if y.dim() < 2:
        raise ValueError(f"y must have a channel dimension (dim >= 2), got shape {tuple(y.shape)}")
    if bias is not None:
        check_tensor(bias, "bias")
        if bias.shape != (y.shape[1],):
            raise ValueError(
                f"bias must have shape ({y.shape[1]},) for y's channels, got {tuple(bias.shape)}"
            )
        if bias.dtype != y.dtype:
            raise ValueError(f"bias must have y's dtype ({y.dtype}), got {bias.dtype}")
        if bias.device != y.device:
            raise ValueError(f"bias must be on y's device ({y.device}), got {bias.device}")
    act = ACT_CODES.get(act, act) if isinstance(act, str) else act
    if act not in ACT_FUNCS:
        raise ValueError(f"act must be one of {list(ACT_CODES)} (or its code), got {act!r}")
    check_like(bases, "bases", y, "y")
    check_like(terms, "terms", y, "y")
    if not 1 <= len(bases) <= MAX_OUTPUTS:
        raise ValueError(f"bases must hold 1 to {MAX_OUTPUTS} tensors, got {len(bases)}")
    if len(terms) > MAX_TERMS:
        raise ValueError(f"terms must hold at most {MAX_TERMS} tensors, got {len(terms)}")
    coeffs = [float(c) for c in coeffs]
    if len(coeffs) != len(bases) * (len(terms) + 1):
        raise ValueError(
            f"coeffs must hold len(bases) * (len(terms) + 1) = {len(bases) * (len(terms) + 1)} values, got {len(coeffs)}"
        )
    h, scale = check_h(h), float(scale)
    if extension.use_extension("rk_epilogue", y):
        return torch.ops.contnet.rk_epilogue(
            y, bias, act, scale, list(bases), list(terms), h, coeffs, bool(return_k)
        )
    return rk_epilogue_reference(y, bias, act, scale, bases, terms, h, coeffs, return_k)
