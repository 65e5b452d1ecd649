"""The pure-PyTorch references of the fused ops: what runs without the extension and inside
``torch.func`` transforms, and what the kernels are tested against. They compute as the
kernels do: half types in float, zero (and underflowing) coefficients skipped, sums in
the kernels' order."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .activations import ACT_CODES, ACT_FUNCS
from .checks import bias_view, opmath, vanishes


def rk_combine_reference(x, terms, h, coeffs) -> torch.Tensor:
    """Pure-PyTorch ``x + h * sum_j coeffs[j] * terms[j]`` (``coeffs`` floats or a 1-d
    tensor), accumulated in float for float16/bfloat16 as the kernels do. Terms with a
    float coefficient that rounds to zero are skipped, as :func:`rk_combine` skips them."""
    acc = opmath(x.dtype)
    out = x.to(acc)
    for j, k in enumerate(terms):
        c = coeffs[j]
        if isinstance(c, torch.Tensor):  # h * c rounded once from float64, as the kernels do
            hc = (h * c.to(torch.float64)).to(acc)
        elif vanishes(h * float(c), x.dtype):
            continue
        else:
            hc = h * float(c)
        out = out + hc * k.to(acc)
    return out.to(x.dtype)


def rk_step_error_reference(x, terms, h, b, e, rtol, atol, x_next=None):
    """Pure-PyTorch :func:`rk_step_error`: ``(x_next, sq)``, computed as the kernels do
    (the error in float for float16/bfloat16, ``x_next`` rounded to the state's dtype before
    it enters the scale, coefficients that round to zero skipped)."""
    acc = opmath(x.dtype)
    if x_next is None:
        x_next = rk_combine_reference(x, terms, h, b)
    err = torch.zeros(x.shape, dtype=acc, device=x.device)
    for k, c in zip(terms, e):
        if not vanishes(h * float(c), x.dtype):
            err = err + (h * float(c)) * k.to(acc)
    scale = torch.maximum(x.to(acc).abs(), x_next.to(acc).abs()) * rtol + atol
    zero = err == 0  # zero whatever the scale; its gradient too (no 0/0 on that branch)
    r = torch.where(
        zero, torch.zeros((), dtype=acc, device=x.device), err / torch.where(zero, 1.0, scale)
    )
    norm = torch.float64 if x.dtype == torch.float64 else torch.float32
    samples = x.shape[0]
    m = x.numel() // samples if samples else 0
    sq = (r * r).reshape(samples, m).sum(1) / m if m else r.new_zeros(samples)
    return x_next, sq.to(norm)


def rk_epilogue_reference(
    y, bias, act, scale, bases, terms, h, coeffs, return_k=False, return_mask=False
):
    """Pure-PyTorch :func:`rk_epilogue` (computed in float for float16/bfloat16). With
    ``return_mask`` (relu only; the op's schema has it, for its own backward) the bool
    tensor ``y + bias > 0`` (NaN: true) comes last."""
    acc = opmath(y.dtype)
    z = y.to(acc) if bias is None else y.to(acc) + bias_view(bias.to(acc), y)
    k = scale * ACT_FUNCS[act](z)
    # each operand widened once: a term's gradient sums over the outputs in float and is
    # rounded once, as the kernels round it
    operands = [t.to(acc) for t in terms] + [k]
    n_terms = len(terms)
    outs = []
    for o, base in enumerate(bases):
        row = coeffs[o * (n_terms + 1) : (o + 1) * (n_terms + 1)]
        out = base.to(acc)
        for c, t in zip(row, operands):
            if not vanishes(h * c, y.dtype):
                out = out + (h * c) * t
        outs.append(out.to(y.dtype))
    if return_k:
        outs.append(k.to(y.dtype))
    if return_mask:
        if act != ACT_CODES["relu"]:
            raise ValueError(f"return_mask needs act relu ({ACT_CODES['relu']}), got act {act}")
        outs.append(~(z <= 0))
    return outs


def basis_interp_reference(phi: torch.Tensor, thetas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Pure-PyTorch ``[einsum("sk,k...->s...", phi, theta) for theta in thetas]``, summed
    over ascending ``k`` and skipping zero entries of ``phi`` as the kernels do (a non-finite
    weight at a node whose basis function vanishes at a time has no effect there)."""
    outs = []
    for theta in thetas:
        acc = opmath(theta.dtype)
        flat = theta.reshape(theta.shape[0], -1).to(acc)
        w = flat.new_zeros(phi.shape[0], flat.shape[1])
        for k in range(phi.shape[1]):
            col = phi[:, k : k + 1].to(acc)
            w = w + torch.where(col != 0, col * flat[k], 0.0)
        outs.append(w.reshape((phi.shape[0],) + tuple(theta.shape[1:])).to(theta.dtype))
    return outs
