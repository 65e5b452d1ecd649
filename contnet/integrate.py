"""``odeint``: fixed-step integration of ``dx/dt = f(t, x)`` with the schemes of
:mod:`contnet.schemes`.

The loop sees only a rate function ``f(t, x)`` (as in torchdiffeq) and tensors; stage
arithmetic goes through the fused :func:`contnet.ops.rk_combine`. A rate that can state
itself as ``scale * act(y + bias)`` (a ``split`` method, as :class:`contnet.ConvUnit` has)
gets its tail fused with the stage updates (:func:`contnet.ops.rk_epilogue`): one pass over
the state per stage. Stage times follow the
open-interval rule of :func:`contnet.schemes.stage_times`. Every step time is a Python
float known before the loop starts, so the loop has no host-device synchronisation and
unrolls into one graph under ``torch.compile``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from . import ops, schemes

__all__ = ["odeint", "rate_times", "BACKPROP_MODES"]

BACKPROP_MODES = ("direct",)


def _check_rate(k, x: torch.Tensor, t: float) -> torch.Tensor:
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"f(t, x) must return a tensor, got {type(k).__name__} at t={t}")
    if k.shape != x.shape:
        raise ValueError(
            f"f(t, x) must return a tensor of x's shape {tuple(x.shape)}, got {tuple(k.shape)} at t={t}"
        )
    return k


def _split_of(f):
    """The rate's ``split(t, x) -> (y, bias, act, scale)``, with
    ``f(t, x) == scale * act(y + bias[channel])``, if it offers one (see
    :meth:`contnet.ConvUnit.split`); None otherwise."""
    split = getattr(f, "split", None)
    if split is None or not getattr(f, "fusable", True):
        return None
    return split


@dataclass(frozen=True)
class _Stage:
    """What stage ``i`` of a fused step does with its ``k_i`` (see :func:`_rk_step_fused`)."""

    prev: tuple[int, ...]  # earlier k_j in the next stage's input (a_{i+1,j} != 0, j < i)
    coeffs: tuple[float, ...]  # rows of the epilogue's coefficients, flattened
    next_input: bool  # writes the next stage's input x + h sum_j a_{i+1,j} k_j
    update_acc: bool  # writes the running x + h sum_{j<=i} b_j k_j
    keep_k: bool  # k_i is needed beyond the next stage


_PLANS: dict = {}


def _fused_plan(tab: schemes.ButcherTableau) -> tuple[_Stage, ...]:
    """Per-stage epilogue layout of a tableau (computed once per tableau)."""
    hit = _PLANS.get(id(tab))
    if hit is not None and hit[0] is tab:
        return hit[1]
    s, a, b = tab.stages, tab.a, tab.b
    stages = []
    for i in range(s):
        prev, rows = (), []
        next_input = i + 1 < s
        if next_input:
            prev = tuple(j for j in range(i) if a[i + 1][j] != 0.0)
            rows += [a[i + 1][j] for j in prev] + [a[i + 1][i]]
        update_acc = b[i] != 0.0 or i + 1 == s
        if update_acc:
            rows += [0.0] * len(prev) + [b[i]]
        keep_k = any(a[m][i] != 0.0 for m in range(i + 2, s))
        stages.append(_Stage(prev, tuple(rows), next_input, update_acc, keep_k))
    plan = tuple(stages)
    if not torch.compiler.is_compiling():
        _PLANS[id(tab)] = (tab, plan)
    return plan


def rk_step(f, x: torch.Tensor, times: list[float], h: float, tab: schemes.ButcherTableau):
    """One explicit Runge-Kutta step from ``x`` with stage times ``times`` and step ``h``."""
    split = _split_of(f)
    if split is not None:
        return _rk_step_fused(split, x, times, h, tab)
    ks: list[torch.Tensor] = []
    for i in range(tab.stages):
        if i == 0:
            xi = x
        else:
            used = [(k, c) for k, c in zip(ks, tab.a[i][:i]) if c != 0.0]
            xi = ops.combine_unchecked(x, [k for k, _ in used], h, [c for _, c in used])
        ks.append(_check_rate(f(times[i], xi), x, times[i]))
    used = [(k, c) for k, c in zip(ks, tab.b) if c != 0.0]
    return ops.combine_unchecked(x, [k for k, _ in used], h, [c for _, c in used])


def _rk_step_fused(split, x, times, h, tab):
    """The step with each stage's tail fused into its updates (:func:`contnet.ops.rk_epilogue`):
    stage ``i`` reads the unit's pre-tail output once and writes the next stage's input
    ``x + h sum_j a_{i+1,j} k_j`` and the running ``x + h sum_{j<=i} b_j k_j``; ``k_i`` is
    kept only when a later stage beyond the next one needs it."""
    ks: dict[int, torch.Tensor] = {}
    acc, xi = x, x
    for i, st in enumerate(_fused_plan(tab)):
        y, bias, act, scale = split(times[i], xi)
        _check_rate(y, x, times[i])
        bases = [x] if st.next_input else []
        if st.update_acc:
            bases.append(acc)
        outs = ops.epilogue_unchecked(
            y,
            bias,
            ops.ACT_CODES[act],
            scale,
            bases,
            [ks[j] for j in st.prev],
            h,
            st.coeffs,
            st.keep_k,
        )
        if st.next_input:
            xi = outs[0]
        if st.update_acc:
            acc = outs[len(bases) - 1]
        if st.keep_k:
            ks[i] = outs[-1]
    return acc


def _integrate_rk(f, x0, tab, n_steps, t0, t1, trajectory):
    h = (t1 - t0) / n_steps
    x = x0
    path = [x0] if trajectory else None
    for times in schemes.stage_times(tab, n_steps, t0, t1):
        x = rk_step(f, x, times, h, tab)
        if trajectory:
            path.append(x)
    return x, path


def _integrate_ab2(f, x0, n_steps, t0, t1, trajectory):
    """Adams-Bashforth 2; the first step is a Heun step (keeps order 2)."""
    h = (t1 - t0) / n_steps
    heun = schemes.get("heun")
    all_times = schemes.stage_times(heun, n_steps, t0, t1)
    x = x0
    path = [x0] if trajectory else None
    f_prev = None
    for n, times in enumerate(all_times):
        fn = _check_rate(f(times[0], x), x, times[0])
        if n == 0:
            k2 = _check_rate(f(times[1], ops.combine_unchecked(x, [fn], h, [1.0])), x, times[1])
            x_next = ops.combine_unchecked(x, [fn, k2], h, list(heun.b))
        else:
            x_next = ops.combine_unchecked(x, [fn, f_prev], h, [1.5, -0.5])
        f_prev, x = fn, x_next
        if trajectory:
            path.append(x)
    return x, path


def rate_times(scheme, n_steps: int, t0: float = 0.0, t1: float = 1.0) -> list[float]:
    """Every distinct time at which :func:`odeint` evaluates the rate, in order of first use."""
    sch = schemes.get(scheme)
    if isinstance(sch, schemes.Multistep) and sch.name == "ab2":
        # the first step is a Heun step
        first = schemes.stage_times("heun", n_steps, t0, t1)[0]
        rows = [first] + schemes.stage_times(sch, n_steps, t0, t1)[1:]
    else:
        rows = schemes.stage_times(sch, n_steps, t0, t1)
    return list(dict.fromkeys(t for row in rows for t in row))


def odeint(
    f,
    x0: torch.Tensor,
    *,
    scheme="rk4",
    n_steps: int = 1,
    t0: float = 0.0,
    t1: float = 1.0,
    backprop: str = "direct",
    trajectory: bool = False,
) -> torch.Tensor:
    """Integrate ``dx/dt = f(t, x)`` from ``x(t0) = x0`` to ``t1`` in ``n_steps`` equal steps.

    Args:
        f: the rate, called as ``f(t, x)`` with a Python float ``t`` and a tensor ``x`` of
            ``x0``'s shape; returns a tensor of the same shape.
        x0: initial state (float32, float64, float16 or bfloat16; any shape and layout).
        scheme: a name from :func:`contnet.schemes.names` or a ``ButcherTableau``.
        n_steps: number of equal steps, ``h = (t1 - t0) / n_steps``.
        t0, t1: integration interval (``t1 < t0`` integrates backwards).
        backprop: how gradients flow; ``"direct"`` differentiates through every stage.
        trajectory: if true, return the states at the ``n_steps + 1`` step boundaries
            stacked along a new first dimension instead of the final state.

    A stage at a step's right end (``c_i = 1``) receives the float just inside the step
    (the open-interval rule; see :func:`contnet.schemes.stage_times`).
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, x), got {type(f).__name__}")
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got {x0.dtype}")
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"unknown backprop {backprop!r}; expected one of {list(BACKPROP_MODES)}")
    sch = schemes.get(scheme)
    n_steps = schemes.check_n_steps(n_steps)
    t0, t1 = float(t0), float(t1)
    if isinstance(sch, schemes.ButcherTableau):
        x, path = _integrate_rk(f, x0, sch, n_steps, t0, t1, trajectory)
    elif sch.name == "ab2":
        x, path = _integrate_ab2(f, x0, n_steps, t0, t1, trajectory)
    else:
        raise ValueError(
            f"scheme {sch.name!r} has a learnable coefficient k(t) and runs inside a "
            "ContinuousBlock (which owns k), not through odeint alone"
        )
    return torch.stack(path) if trajectory else x
