"""The fake (meta) kernels of the ops, which only check and allocate, so that
``torch.compile`` traces through them; registered when the extension is loaded (its
autograd is registered in C++, ``csrc/autograd.cpp``)."""

from __future__ import annotations

import torch

from .activations import ACT_CODES
from .checks import empty_dense, node_major_strides
from .extension import extension_loaded

# check and allocate, here.
if extension_loaded():
    lib = torch.library

    @lib.register_fake("contnet::rk_combine")
    def _(x, terms, h, coeffs):
        return torch.empty_like(x)

    @lib.register_fake("contnet::rk_combine_backward")
    def _(grad, h, coeffs):
        return [torch.empty_like(grad) for _ in coeffs]

    @lib.register_fake("contnet::rk_combine_learned")
    def _(x, terms, h, coeffs):
        return torch.empty_like(x)

    @lib.register_fake("contnet::rk_combine_learned_backward")
    def _(grad, terms, h, coeffs):
        return [empty_dense(grad) for _ in terms], coeffs.new_empty(coeffs.shape)

    relu = ACT_CODES["relu"]

    @lib.register_fake("contnet::rk_epilogue")
    def _(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask=False):
        if return_mask and act != relu:
            raise ValueError(f"return_mask needs act relu ({relu}), got act {act}")
        outs = [empty_dense(y) for _ in range(len(bases) + int(return_k))]
        return outs + ([empty_dense(y, torch.bool)] if return_mask else [])

    @lib.register_fake("contnet::rk_epilogue_backward")
    def _(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs):
        dtype = y.dtype
        if y.dtype == torch.bool:  # relu's mask: the gradients take the outputs' gradients' dtype
            if act != relu:
                raise ValueError(f"y may be a bool mask only for act relu ({relu}), got act {act}")
            given = [g for g in [*grads, grad_k] if g is not None]
            if not given:
                raise ValueError("with a bool mask for y, grads or grad_k must be given")
            dtype = given[0].dtype
        grad_bias = bias.new_empty(bias.shape) if bias is not None else y.new_empty(0, dtype=dtype)
        return (
            empty_dense(y, dtype),
            [empty_dense(y, dtype) for _ in range(n_terms)],
            grad_bias,
        )

    def _norm_of(x):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.new_empty((x.shape[0],), dtype=dtype)

    @lib.register_fake("contnet::rk_step_error")
    def _(x, terms, h, b, e, rtol, atol):
        return empty_dense(x), _norm_of(x)

    @lib.register_fake("contnet::rk_error_norm")
    def _(x, x_next, terms, h, e, rtol, atol):
        return _norm_of(x)

    @lib.register_fake("contnet::basis_interp")
    def _(phi, thetas):
        outs = []
        for t in thetas:
            shape = (phi.shape[0],) + tuple(t.shape[1:])
            strides = node_major_strides(t)
            outs.append(
                t.new_empty(shape) if strides is None else t.new_empty_strided(shape, strides)
            )
        return outs
