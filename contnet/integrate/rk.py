"""One explicit Runge-Kutta step: the stages and their updates, through the fused ops.

The integrator sees only a rate ``f(t, x)``. A rate that can state itself as
``scale * act(y + bias)`` (its optional ``split``, see :class:`contnet.nn.Unit`) gets its
tail fused with the stage updates (:func:`contnet.ops.rk_epilogue`): one pass over the
state per stage. Otherwise the stage updates go through :func:`contnet.ops.rk_combine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops, schemes


def check_rate(k, x: torch.Tensor, t: float) -> torch.Tensor:
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"f(t, x) must return a tensor, got {type(k).__name__} at t={t}")
    if k.shape != x.shape:
        raise ValueError(
            f"f(t, x) must return a tensor of x's shape {tuple(x.shape)}, got {tuple(k.shape)} at t={t}"
        )
    if not k.is_floating_point():
        raise TypeError(f"f(t, x) must return a floating-point tensor, got {k.dtype} at t={t}")
    if (
        k.dtype != x.dtype
        and torch.promote_types(k.dtype, x.dtype) != x.dtype
        and not torch.is_autocast_enabled(x.device.type)
    ):
        # a wider rate would promote the state and the next stage would meet weights of
        # the state's dtype (a narrower one, as under autocast, is promoted to it)
        raise TypeError(
            f"f(t, x) must return a tensor of x's dtype {x.dtype} (or a narrower one), got "
            f"{k.dtype} at t={t}"
        )
    if k.device != x.device:
        raise ValueError(
            f"f(t, x) must return a tensor on x's device {x.device}, got {k.device} at t={t}"
        )
    return k


def split_of(f):
    """The rate's ``split(t, x) -> (y, bias, act, scale)``, with
    ``f(t, x) == scale * act(y + bias[channel])``, if it offers one (an attribute, not
    None) and may use it now (its ``fusable``, if it has one, is true: a unit with a hook on
    it cannot, see :class:`contnet.nn.SplitUnit`); None otherwise. Read from the rate itself at every step: one rate
    of a type may offer it where another does not (a unit whose tail has a batch norm)."""
    split = getattr(f, "split", None)
    if split is None or not callable(split) or not getattr(f, "fusable", True):
        return None
    return split


@dataclass(frozen=True)
class _Stage:
    """What stage ``i`` of a fused step does with its ``k_i`` (see :func:`fused_stages`)."""

    prev: tuple[int, ...]  # earlier k_j among the epilogue's terms
    coeffs: tuple[float, ...]  # rows of the epilogue's coefficients, flattened
    next_input: bool  # writes the next stage's input x + h sum_j a_{i+1,j} k_j
    update_acc: bool  # writes the running x + h sum_{j<=i} b_j k_j
    keep_k: bool  # k_i is needed beyond the next stage, or by the error estimate


_PLANS: dict = {}


def _fused_plan(tab: schemes.ButcherTableau, first: bool = False, keep=frozenset()):
    """Per-stage epilogue layout of a tableau (computed once per tableau and setting).
    ``first``: ``k_1`` is given (a first-same-as-last pair's rate handed on from the last
    step), so stage 1 is not computed and its ``b_1 k_1`` joins the first running update;
    ``keep``: stages whose ``k`` the caller needs back."""
    key = (id(tab), first, keep)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is tab:
        return hit[1]
    s, a, b = tab.stages, tab.a, tab.b
    stages, folded = [], not (first and b[0] != 0.0)
    for i in range(int(first), s):
        rows = []
        next_input = i + 1 < s
        update_acc = b[i] != 0.0 or i + 1 == s
        fold = update_acc and not folded
        folded = folded or fold
        used = {j for j in range(i) if next_input and a[i + 1][j] != 0.0} | ({0} if fold else set())
        prev = tuple(sorted(used))
        if next_input:
            rows += [a[i + 1][j] for j in prev] + [a[i + 1][i]]
        if update_acc:
            rows += [b[j] if fold and j == 0 else 0.0 for j in prev] + [b[i]]
        keep_k = i in keep or any(a[m][i] != 0.0 for m in range(i + 2, s))
        stages.append(_Stage(prev, tuple(rows), next_input, update_acc, keep_k))
    plan = tuple(stages)
    if not torch.compiler.is_compiling():
        _PLANS[key] = (tab, plan)
    return plan


def rk_step(f, x: torch.Tensor, times: list[float], h: float, tab: schemes.ButcherTableau):
    """One explicit Runge-Kutta step from ``x`` with stage times ``times`` and step ``h``."""
    split = split_of(f)
    if split is not None:
        return _rk_step_fused(split, x, times, h, tab)
    return weighted(x, stage_rates(f, x, times, h, tab), h, tab.b)


def stage_rates(f, x, times, h: float, tab, first=None) -> list[torch.Tensor]:
    """The rates ``k_i`` of one step's stages at ``times`` (``first``: ``k_1``, if known)."""
    ks: list[torch.Tensor] = [] if first is None else [first]
    for i in range(len(ks), tab.stages):
        xi = x if i == 0 else weighted(x, ks, h, tab.a[i][:i])
        ks.append(check_rate(f(times[i], xi), x, times[i]))
    return ks


def weighted(base, ks, h: float, weights) -> torch.Tensor:
    """``base + h sum_i w_i k_i`` over the non-zero weights."""
    used = [(k, w) for k, w in zip(ks, weights) if w != 0.0]
    return ops.combine_unchecked(base, [k for k, _ in used], h, [w for _, w in used])


def _rk_step_fused(split, x, times, h, tab):
    return fused_stages(split, x, times, h, tab)[0]


def fused_stages(split, x, times, h, tab, first=None, keep=frozenset()):
    """The step with each stage's tail fused into its updates (:func:`contnet.ops.rk_epilogue`):
    stage ``i`` reads the unit's pre-tail output once and writes the next stage's input
    ``x + h sum_j a_{i+1,j} k_j`` and the running ``x + h sum_{j<=i} b_j k_j``; ``k_i`` is
    kept only when a later stage beyond the next one needs it, or ``i`` is in ``keep``.
    ``first``: ``k_1`` if known. Returns the new state and ``{i: k_i}`` of the kept rates."""
    ks: dict[int, torch.Tensor] = {}
    acc, xi = x, x
    if first is not None:
        ks[0] = first
        if tab.stages > 1:
            xi = weighted(x, [first], h, [tab.a[1][0]])
    # while every tensor of the step has x's dtype (the common case) the op itself, looked
    # up once; a stage of another dtype (autocast) and the rest of the step promote
    dtype, kernel = x.dtype, ops.epilogue_kernel(x)
    for st, i in zip(
        _fused_plan(tab, first is not None, keep), range(int(first is not None), tab.stages)
    ):
        y, bias, act, scale = split(times[i], xi)
        if (
            not isinstance(y, torch.Tensor)
            or y.shape != x.shape
            or y.device != x.device
            or y.dtype != x.dtype
        ):
            check_rate(y, x, times[i])
        bases = [x, acc] if st.next_input and st.update_acc else [x] if st.next_input else [acc]
        terms = [ks[j] for j in st.prev] if st.prev else []
        if dtype is not None and y.dtype == dtype and (bias is None or bias.dtype == dtype):
            epilogue = kernel
        else:
            dtype, epilogue = None, ops.epilogue_unchecked
        outs = epilogue(y, bias, ops.ACT_CODES[act], scale, bases, terms, h, st.coeffs, st.keep_k)
        if st.next_input:
            xi = outs[0]
        if st.update_acc:
            acc = outs[len(bases) - 1]
        if st.keep_k:
            ks[i] = outs[-1]
    return acc, ks


def rate_of(f, t: float, x: torch.Tensor) -> torch.Tensor:
    """``f(t, x)``, checked; through the fused tail (one pass) where the rate splits."""
    split = split_of(f)
    if split is None:
        return check_rate(f(t, x), x, t)
    y, bias, act, scale = split(t, x)
    check_rate(y, x, t)
    return ops.epilogue_unchecked(y, bias, ops.ACT_CODES[act], scale, [], [], 0.0, (), True)[0]


def embedded_step(f, x, times, h: float, tab, first=None, t_end=None):
    """One step of an embedded pair from ``x``: ``(x_next, ks)``, with ``ks`` the rates its
    error estimate reads (None where its weight is zero; ``ks[0]`` always there) and, for a
    first-same-as-last pair, the rate at ``x_next`` at ``t_end`` last. ``x_next`` is None
    where the error op is to compute it (a pair that is not first-same-as-last, with a rate
    that does not split). ``first``: ``k_1`` if known."""
    e = tab.error_weights
    split = split_of(f)
    if split is None:
        ks = stage_rates(f, x, times, h, tab, first)
        x_next = weighted(x, ks, h, tab.b) if tab.fsal else None
    else:
        # k_1 too, which a rejected step's retry from the same state reuses
        keep = frozenset(i for i in range(tab.stages) if e[i] != 0.0 or i == 0)
        x_next, kept = fused_stages(split, x, times, h, tab, first, keep)
        ks = [kept.get(i) for i in range(tab.stages)]
    if tab.fsal:
        ks.append(rate_of(f, t_end, x_next))
    return x_next, ks
