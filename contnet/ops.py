"""The fused ops of contnet.

Each op has a typed Python wrapper here, a pure-PyTorch reference (``*_reference``), and,
when the extension ``contnet._C`` is built, C++/CUDA kernels registered as
``torch.ops.contnet.*`` with autograd and fake (meta) implementations registered below, so
``torch.compile(fullgraph=True)`` traces through them. Without the extension, or under
:func:`use_reference`, the wrappers run the references (one warning when the extension is
missing).

Ops (float32, float64, float16, bfloat16 -- half types accumulate in float; CPU and CUDA):

- :func:`rk_combine` -- stage accumulation ``out = x + h * sum_j c_j k_j`` for any number
  of same-shaped terms in one pass over memory. Coefficients by value (Python floats), or a
  1-d tensor of learned coefficients that receives ``grad_c_j = h <k_j, grad>``.
- :func:`rk_epilogue` -- the residual unit's tail ``k = scale * act(y + bias)`` fused with
  the stage updates that consume ``k`` (next stage input, running ``x_n + h sum b_i k_i``):
  one pass over the state per stage.
- :func:`basis_interp` -- time-interpolated weights ``W[s] = sum_k phi[s, k] theta[k]`` for
  all stage times of a forward pass and several tensors in one launch; its backward
  scatters into the basis nodes (the same op with ``phi`` transposed).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ACT_CODES",
    "backend",
    "extension_loaded",
    "use_reference",
    "rk_combine",
    "rk_combine_reference",
    "rk_epilogue",
    "rk_epilogue_reference",
    "basis_interp",
    "basis_interp_reference",
]

_EXT_ERROR: Exception | None = None
try:
    from . import _C  # noqa: F401  (importing registers torch.ops.contnet.*)
except ImportError as err:  # pragma: no cover - exercised only without the build
    _EXT_ERROR = err

#: activation codes shared with csrc/include/contnet/activations.h
ACT_CODES = {"identity": 0, "relu": 1, "tanh": 2, "gelu": 3, "silu": 4, "softplus": 5}


def _gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact gelu, ``z * Phi(z)``, written out as the kernels compute it. ``F.gelu``'s
    vectorised CPU loop gives NaN at ``+inf`` in float32 (its scalar loop, float64 and the
    formula give ``inf``); this form gives every value ``F.gelu`` gives in float64."""
    return 0.5 * z * (1.0 + torch.erf(z * math.sqrt(0.5)))


_ACT_FUNCS = {
    0: lambda z: z,
    1: F.relu,
    2: torch.tanh,
    3: _gelu,
    4: F.silu,
    5: F.softplus,
}
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_OUTPUTS = 3
_MAX_TERMS = 8
_force_reference = os.environ.get("CONTNET_BACKEND", "") == "reference"
_warned_missing = False


def extension_loaded() -> bool:
    """Whether ``contnet._C`` was imported (its kernels are registered)."""
    return _EXT_ERROR is None


_OPS = ("rk_combine", "rk_combine_learned", "rk_epilogue", "basis_interp")
# which devices each op has kernels for, looked up once (the dispatcher query does not trace)
_KERNELS = {
    (op, dev): extension_loaded()
    and torch._C._dispatch_has_kernel_for_dispatch_key(f"contnet::{op}", key)
    for op in _OPS
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def _has_kernel(op: str, device_type: str) -> bool:
    return _KERNELS.get((op, device_type), False)


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


def in_func_transform() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is running: those see only
    what pure PyTorch does, not the extension's C++ autograd nor a Python
    ``autograd.Function`` without a ``setup_context``."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def _use_extension(op: str, t: torch.Tensor) -> bool:
    global _warned_missing
    if _force_reference:
        return False
    # inside a torch.func transform the references run (the same results, pure PyTorch)
    if in_func_transform():
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
    device_type = "cuda" if t.is_cuda else "cpu" if t.is_cpu else t.device.type
    return _has_kernel(op, device_type)


# ---------------------------------------------------------------------------- checks
def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_list(ts, name: str) -> None:
    if isinstance(ts, torch.Tensor) or not isinstance(ts, Sequence):
        raise TypeError(f"{name} must be a sequence of tensors, got {type(ts).__name__}")


def _check_like(ts, name: str, ref: torch.Tensor, ref_name: str) -> None:
    _check_list(ts, name)
    for j, k in enumerate(ts):
        _check_tensor(k, f"{name}[{j}]")
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


def _check_h(h) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"h must be a Python number, got {type(h).__name__}")
    return float(h)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _vanishes(hc: float, dtype: torch.dtype) -> bool:
    """Whether the step coefficient ``hc`` rounds to zero in the kernels' accumulation type
    for ``dtype`` (float32 below float64); such a term is skipped, so a non-finite operand
    with a zero coefficient has no effect."""
    return hc == 0.0 or (_opmath(dtype) != torch.float64 and abs(hc) <= 2.0**-150)


def _dense_format(t: torch.Tensor) -> torch.memory_format:
    """The layout the flat kernels use (mirrors csrc/include/contnet/layout.h)."""
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def _node_major_strides(t: torch.Tensor):
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


def _empty_dense(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device).contiguous(
        memory_format=_dense_format(t)
    )


# ---------------------------------------------------------------------------- internal
# Unchecked entry points for callers inside contnet whose arguments are consistent by
# construction (the integrator): no Python-side validation, coefficients already floats
# without zeros. The kernels still check their inputs. Mixed dtypes -- as under
# torch.autocast, where convolutions return half precision while the state stays float32
# -- are promoted to the widest, as autocast does for pointwise ops.
def _common_dtype(first, others):
    """The dtype ``first`` and ``others`` (None allowed) promote to, or None when they all
    have ``first``'s (the common case: no promotion to compute)."""
    dtype, mixed = first.dtype, False
    for t in others:
        if t is not None and t.dtype != dtype:
            dtype, mixed = torch.promote_types(dtype, t.dtype), True
    return dtype if mixed else None


def _cast(t, dtype):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def combine_unchecked(x, terms, h: float, coeffs) -> torch.Tensor:
    dtype = _common_dtype(x, terms)
    if dtype is not None:
        x, terms = _cast(x, dtype), [_cast(t, dtype) for t in terms]
    if _use_extension("rk_combine", x):
        return torch.ops.contnet.rk_combine.default(x, terms, h, coeffs)
    return rk_combine_reference(x, terms, h, coeffs)


def combine_learned_unchecked(x, terms, h: float, coeffs: torch.Tensor) -> torch.Tensor:
    dtype = _common_dtype(x, terms) or x.dtype
    x, terms, coeffs = _cast(x, dtype), [_cast(t, dtype) for t in terms], _cast(coeffs, dtype)
    if _use_extension("rk_combine_learned", x):
        return torch.ops.contnet.rk_combine_learned.default(x, terms, h, coeffs)
    return rk_combine_reference(x, terms, h, coeffs)


def epilogue_kernel(like: torch.Tensor):
    """The epilogue as a callable of :func:`epilogue_unchecked`'s arguments for tensors of
    ``like``'s device that all have one dtype (no checks, no promotion): the extension's
    op where it has a kernel for that device, else the reference. An integrator looks it
    up once per step instead of once per stage. In eager mode the op is called through
    ``contnet._C.rk_epilogue``, which reads plain arguments without torch.ops' boxing (the
    same dispatcher call; anything else goes to torch.ops); under ``torch.compile`` through
    torch.ops. The choice is made by this call: look the kernel up inside the region that
    calls it (a compiled region cannot call the eager entry)."""
    if _use_extension("rk_epilogue", like):
        if torch.compiler.is_compiling():
            return torch.ops.contnet.rk_epilogue.default
        return _C.rk_epilogue
    return rk_epilogue_reference


def epilogue_unchecked(
    y, bias, act: int, scale: float, bases, terms, h: float, coeffs, return_k: bool
):
    dtype = _common_dtype(y, (bias, *bases, *terms))
    if dtype is not None:
        y, bias = _cast(y, dtype), _cast(bias, dtype)
        bases, terms = [_cast(t, dtype) for t in bases], [_cast(t, dtype) for t in terms]
    return epilogue_kernel(y)(y, bias, act, scale, bases, terms, h, coeffs, return_k)


# ---------------------------------------------------------------------------- rk_combine
def rk_combine_reference(x, terms, h, coeffs) -> torch.Tensor:
    """Pure-PyTorch ``x + h * sum_j coeffs[j] * terms[j]`` (``coeffs`` floats or a 1-d
    tensor), accumulated in float for float16/bfloat16 as the kernels do. Terms with a
    float coefficient that rounds to zero are skipped, as :func:`rk_combine` skips them."""
    acc = _opmath(x.dtype)
    out = x.to(acc)
    for j, k in enumerate(terms):
        c = coeffs[j]
        if isinstance(c, torch.Tensor):  # h * c rounded once from float64, as the kernels do
            hc = (h * c.to(torch.float64)).to(acc)
        elif _vanishes(h * float(c), x.dtype):
            continue
        else:
            hc = h * float(c)
        out = out + hc * k.to(acc)
    return out.to(x.dtype)


def rk_combine(x: torch.Tensor, terms: Sequence[torch.Tensor], h: float, coeffs) -> torch.Tensor:
    """Stage accumulation ``out = x + h * sum_j coeffs[j] * terms[j]``.

    ``terms``: tensors of the shape, dtype and device of ``x`` (any strides; the output
    takes ``x``'s memory format). ``coeffs``: Python numbers (fixed tableau entries,
    passed by value; terms with a zero coefficient are skipped) or a 1-d tensor on ``x``'s
    device (learned coefficients, which get gradients ``h <terms[j], grad>``). One pass over
    memory reads every input once and writes the output once.
    """
    _check_tensor(x, "x")
    _check_like(terms, "terms", x, "x")
    h = _check_h(h)
    if isinstance(coeffs, torch.Tensor):
        _check_tensor(coeffs, "coeffs")
        if coeffs.dim() != 1 or coeffs.shape[0] != len(terms):
            raise ValueError(
                f"coeffs must be a 1-d tensor with one value per term ({len(terms)}), got shape {tuple(coeffs.shape)}"
            )
        if coeffs.device != x.device:
            raise ValueError(f"coeffs must be on the device of x ({x.device}), got {coeffs.device}")
        if len(terms) > _MAX_TERMS:
            raise ValueError(
                f"terms must hold at most {_MAX_TERMS} tensors with learned coefficients"
            )
        if _use_extension("rk_combine_learned", x):
            return torch.ops.contnet.rk_combine_learned(x, list(terms), h, coeffs)
        return rk_combine_reference(x, terms, h, coeffs)
    coeffs = [float(c) for c in coeffs]
    if len(terms) != len(coeffs):
        raise ValueError(
            f"terms and coeffs must have the same length, got {len(terms)} and {len(coeffs)}"
        )
    kept = [(k, c) for k, c in zip(terms, coeffs) if not _vanishes(h * c, x.dtype)]
    terms, coeffs = [k for k, _ in kept], [c for _, c in kept]
    if _use_extension("rk_combine", x):
        return torch.ops.contnet.rk_combine(x, terms, h, coeffs)
    return rk_combine_reference(x, terms, h, coeffs)


# ---------------------------------------------------------------------------- rk_epilogue
def _bias_view(bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return bias.view((1, -1) + (1,) * (y.dim() - 2))


def rk_epilogue_reference(
    y, bias, act, scale, bases, terms, h, coeffs, return_k=False, return_mask=False
):
    """Pure-PyTorch :func:`rk_epilogue` (computed in float for float16/bfloat16). With
    ``return_mask`` (relu only; the op's schema has it, for its own backward) the bool
    tensor ``y + bias > 0`` (NaN: true) comes last."""
    acc = _opmath(y.dtype)
    z = y.to(acc) if bias is None else y.to(acc) + _bias_view(bias.to(acc), y)
    k = scale * _ACT_FUNCS[act](z)
    # each operand widened once: a term's gradient sums over the outputs in float and is
    # rounded once, as the kernels round it
    operands = [t.to(acc) for t in terms] + [k]
    n_terms = len(terms)
    outs = []
    for o, base in enumerate(bases):
        row = coeffs[o * (n_terms + 1) : (o + 1) * (n_terms + 1)]
        out = base.to(acc)
        for c, t in zip(row, operands):
            if not _vanishes(h * c, y.dtype):
                out = out + (h * c) * t
        outs.append(out.to(y.dtype))
    if return_k:
        outs.append(k.to(y.dtype))
    if return_mask:
        if act != ACT_CODES["relu"]:
            raise ValueError(f"return_mask needs act relu ({ACT_CODES['relu']}), got act {act}")
        outs.append(~(z <= 0))
    return outs


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
    _check_tensor(y, "y")
    if y.dim() < 2:
        raise ValueError(f"y must have a channel dimension (dim >= 2), got shape {tuple(y.shape)}")
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.shape != (y.shape[1],):
            raise ValueError(
                f"bias must have shape ({y.shape[1]},) for y's channels, got {tuple(bias.shape)}"
            )
        if bias.dtype != y.dtype:
            raise ValueError(f"bias must have y's dtype ({y.dtype}), got {bias.dtype}")
        if bias.device != y.device:
            raise ValueError(f"bias must be on y's device ({y.device}), got {bias.device}")
    act = ACT_CODES.get(act, act) if isinstance(act, str) else act
    if act not in _ACT_FUNCS:
        raise ValueError(f"act must be one of {list(ACT_CODES)} (or its code), got {act!r}")
    _check_like(bases, "bases", y, "y")
    _check_like(terms, "terms", y, "y")
    if not 1 <= len(bases) <= _MAX_OUTPUTS:
        raise ValueError(f"bases must hold 1 to {_MAX_OUTPUTS} tensors, got {len(bases)}")
    if len(terms) > _MAX_TERMS:
        raise ValueError(f"terms must hold at most {_MAX_TERMS} tensors, got {len(terms)}")
    coeffs = [float(c) for c in coeffs]
    if len(coeffs) != len(bases) * (len(terms) + 1):
        raise ValueError(
            f"coeffs must hold len(bases) * (len(terms) + 1) = {len(bases) * (len(terms) + 1)} values, got {len(coeffs)}"
        )
    h, scale = _check_h(h), float(scale)
    if _use_extension("rk_epilogue", y):
        return torch.ops.contnet.rk_epilogue(
            y, bias, act, scale, list(bases), list(terms), h, coeffs, bool(return_k)
        )
    return rk_epilogue_reference(y, bias, act, scale, bases, terms, h, coeffs, return_k)


# ---------------------------------------------------------------------------- basis_interp
def basis_interp_reference(phi: torch.Tensor, thetas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Pure-PyTorch ``[einsum("sk,k...->s...", phi, theta) for theta in thetas]``, summed
    over ascending ``k`` and skipping zero entries of ``phi`` as the kernels do (a non-finite
    weight at a node whose basis function vanishes at a time has no effect there)."""
    outs = []
    for theta in thetas:
        acc = _opmath(theta.dtype)
        flat = theta.reshape(theta.shape[0], -1).to(acc)
        w = flat.new_zeros(phi.shape[0], flat.shape[1])
        for k in range(phi.shape[1]):
            col = phi[:, k : k + 1].to(acc)
            w = w + torch.where(col != 0, col * flat[k], 0.0)
        outs.append(w.reshape((phi.shape[0],) + tuple(theta.shape[1:])).to(theta.dtype))
    return outs


def basis_interp(phi: torch.Tensor, thetas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Time-interpolated weights ``out[j][s] = sum_k phi[s, k] * thetas[j][k]``.

    ``phi``: float64 ``(S, K)`` coefficients of the basis at ``S`` stage times (see
    :meth:`contnet.basis.Basis.__call__`), on the tensors' device; a constant (no gradient).
    ``thetas``: tensors with ``K`` nodes along dim 0. Returns tensors of shape
    ``(S, *theta.shape[1:])``, all in one launch; differentiable in ``thetas``. Where each
    node of a theta is one dense block in one layout for all (channels_last filter banks
    stacked along dim 0, as a channels_last block keeps them) the kernels read it in place
    and the output keeps that layout (dim 0 of stride ``theta[0].numel()``); otherwise, and
    from the reference, the output is contiguous.
    """
    _check_tensor(phi, "phi")
    if phi.dtype != torch.float64 or phi.dim() != 2:
        raise ValueError(f"phi must be a float64 (S, K) matrix, got {phi.dtype} {tuple(phi.shape)}")
    if phi.shape[1] < 1:
        raise ValueError("phi must have at least one node (column)")
    if phi.requires_grad:
        raise ValueError("phi must not require grad: the basis coefficients are constants")
    _check_list(thetas, "thetas")
    if not thetas:
        raise ValueError("thetas must hold at least one tensor")
    for j, t in enumerate(thetas):
        _check_tensor(t, f"thetas[{j}]")
        if t.dim() < 1 or t.shape[0] != phi.shape[1]:
            raise ValueError(
                f"thetas[{j}] must have {phi.shape[1]} nodes along dim 0, got {tuple(t.shape)}"
            )
        if t.device != phi.device:
            raise ValueError(f"thetas[{j}] must be on phi's device ({phi.device}), got {t.device}")
    if _use_extension("basis_interp", phi):
        return torch.ops.contnet.basis_interp(phi, list(thetas))
    return basis_interp_reference(phi, thetas)


# ---------------------------------------------------------------------------- registration
# Autograd is registered in C++ (csrc/autograd.cpp); the fake (meta) kernels, which only
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
        return [_empty_dense(grad) for _ in terms], coeffs.new_empty(coeffs.shape)

    relu = ACT_CODES["relu"]

    @lib.register_fake("contnet::rk_epilogue")
    def _(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask=False):
        if return_mask and act != relu:
            raise RuntimeError(f"return_mask needs act relu ({relu}), got act {act}")
        outs = [_empty_dense(y) for _ in range(len(bases) + int(return_k))]
        return outs + ([_empty_dense(y, torch.bool)] if return_mask else [])

    @lib.register_fake("contnet::rk_epilogue_backward")
    def _(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs):
        dtype = y.dtype
        if y.dtype == torch.bool:  # relu's mask: the gradients take the outputs' gradients' dtype
            if act != relu:
                raise RuntimeError(
                    f"y may be a bool mask only for act relu ({relu}), got act {act}"
                )
            given = [g for g in [*grads, grad_k] if g is not None]
            if not given:
                raise RuntimeError("with a bool mask for y, grads or grad_k must be given")
            dtype = given[0].dtype
        grad_bias = bias.new_empty(bias.shape) if bias is not None else y.new_empty(0, dtype=dtype)
        return (
            _empty_dense(y, dtype),
            [_empty_dense(y, dtype) for _ in range(n_terms)],
            grad_bias,
        )

    @lib.register_fake("contnet::basis_interp")
    def _(phi, thetas):
        outs = []
        for t in thetas:
            shape = (phi.shape[0],) + tuple(t.shape[1:])
            strides = _node_major_strides(t)
            outs.append(
                t.new_empty(shape) if strides is None else t.new_empty_strided(shape, strides)
            )
        return outs
