"""The activations of the fused epilogue.

Their names and codes come from one table, ``activations.def`` beside this file, which the
C++ kernels include too (``csrc/include/contnet/activations.h``). Each name has two
functions: the one the layers call (``torch.nn.functional``'s) and the one the references
compute, written out as the kernels compute it (:data:`ACT_FUNCS`, by code)."""

from __future__ import annotations

import math
import pathlib
import re

import torch
import torch.nn.functional as F

__all__ = ["NAMES", "ACT_CODES", "ACT_FUNCS", "MODULE_FUNCS", "gelu"]


def _table() -> tuple[str, ...]:
    text = (pathlib.Path(__file__).parent / "activations.def").read_text()
    return tuple(re.findall(r"^CONTNET_ACTIVATION\((\w+),\s*\w+\)", text, re.MULTILINE))


#: the activation names in the order of their codes
NAMES = _table()
#: name -> code, as the kernels take it
ACT_CODES = {name: code for code, name in enumerate(NAMES)}


def gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact gelu, ``z * Phi(z)``, written out as the kernels compute it. ``F.gelu``'s
    vectorised CPU loop gives NaN at ``+inf`` in float32 (its scalar loop, float64 and the
    formula give ``inf``); this form gives every value ``F.gelu`` gives in float64."""
    return 0.5 * z * (1.0 + torch.erf(z * math.sqrt(0.5)))


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


#: name -> the function a layer applies
MODULE_FUNCS = {
    "identity": _identity,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
}
_REFERENCE = {**MODULE_FUNCS, "relu": F.relu, "gelu": gelu}
if set(MODULE_FUNCS) != set(NAMES):  # pragma: no cover - a table and functions out of step
    raise ImportError(f"activations.def names {NAMES}, the functions {tuple(MODULE_FUNCS)}")
#: code -> the function the references compute
ACT_FUNCS = {ACT_CODES[name]: _REFERENCE[name] for name in NAMES}
