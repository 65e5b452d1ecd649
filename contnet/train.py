"""The main job's workhorses: evaluation of manifestations (and, later, training)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .block import ContinuousBlock

__all__ = ["blocks_of", "manifestation_drift", "fitted_order"]


def blocks_of(model: nn.Module) -> list[ContinuousBlock]:
    """Every ContinuousBlock in ``model``."""
    return [m for m in model.modules() if isinstance(m, ContinuousBlock)]


def _set(blocks, scheme, n_steps):
    for b in blocks:
        b.scheme, b.n_steps = scheme, n_steps


def fitted_order(steps, errors) -> float:
    """Least-squares slope of ``log error`` against ``log h`` (``h = 1/steps``); NaN when
    fewer than two positive errors."""
    pts = [(math.log(1.0 / n), math.log(e)) for n, e in zip(steps, errors) if e > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


@torch.no_grad()
def manifestation_drift(model: nn.Module, x: torch.Tensor, schemes, steps, reference=("rk4", 64)):
    """Output drift of ``model(x)`` for every ``scheme x n_steps`` against the
    ``reference`` manifestation: ``|y - y_ref| / |y_ref|`` (Frobenius norms).

    Returns ``{scheme: {"drift": {n_steps: value}, "order": slope}}`` where ``order`` is
    fitted on the step counts at or above the largest basis size in the model (where the
    steps resolve every piece of ``theta``). Restores every block's settings afterwards.
    """
    blocks = blocks_of(model)
    if not blocks:
        raise ValueError("model holds no ContinuousBlock")
    saved = [(b.scheme, b.n_steps) for b in blocks]
    try:
        _set(blocks, *reference)
        ref = model(x)
        k_max = max(getattr(b.unit, "n_basis", 1) for b in blocks)
        table = {}
        for scheme in schemes:
            drift = {}
            for n in steps:
                _set(blocks, scheme, n)
                drift[n] = ((model(x) - ref).norm() / ref.norm()).item()
            fit = [n for n in steps if n >= k_max] or list(steps)
            table[scheme] = {"drift": drift, "order": fitted_order(fit, [drift[n] for n in fit])}
        return table
    finally:
        for b, (s, n) in zip(blocks, saved):
            b.scheme, b.n_steps = s, n
