"""Loading the extension ``contnet._C`` and choosing, per call, between its kernels and the
pure-PyTorch references: the references run without the extension (one warning), inside
``torch.func`` transforms, under forward-mode AD, and under :func:`use_reference`."""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
from torch.autograd import forward_ad

_EXT_ERROR: Exception | None = None
try:
    from .. import _C  # noqa: F401  (importing registers torch.ops.contnet.*)
except ImportError as err:  # pragma: no cover - exercised only without the build
    _EXT_ERROR = err

_force_reference = os.environ.get("CONTNET_BACKEND", "") == "reference"
_warned_missing = False


def extension_loaded() -> bool:
    """Whether ``contnet._C`` was imported (its kernels are registered)."""
    return _EXT_ERROR is None


_OPS = ("rk_combine", "rk_combine_learned", "rk_epilogue", "rk_step_error", "basis_interp")


# which devices each op has kernels for, looked up once (the dispatcher query does not trace)
_KERNELS = {
    (op, dev): extension_loaded()
    and torch._C._dispatch_has_kernel_for_dispatch_key(f"contnet::{op}", key)
    for op in _OPS
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def has_kernel(op: str, device_type: str) -> bool:
    return _KERNELS.get((op, device_type), False)


def backend() -> str:
    """Which implementation the ops run, in words, e.g. ``"extension (cpu, cuda)"``."""
    if not extension_loaded():
        return f"reference (contnet._C is not built: {_EXT_ERROR})"
    if _force_reference:
        return "reference (forced)"
    kinds = [d for d in ("cpu", "cuda") if has_kernel("rk_combine", d)]
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


def in_forward_ad() -> bool:
    """Whether forward-mode AD is on (within ``torch.autograd.forward_ad.dual_level``): the
    extension's C++ autograd has no forward derivative; the references' pure PyTorch has."""
    return forward_ad._current_level >= 0


def use_extension(op: str, t: torch.Tensor) -> bool:
    global _warned_missing
    if _force_reference:
        return False
    # inside a torch.func transform or under forward-mode AD the references run (the same
    # results, pure PyTorch)
    if in_func_transform() or in_forward_ad():
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
    return has_kernel(op, device_type)
