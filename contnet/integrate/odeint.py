"""``odeint``: fixed-step integration of ``dx/dt = f(t, x)`` with the schemes of
:mod:`contnet.schemes`.

The loop sees only a rate function ``f(t, x)`` (as in torchdiffeq) and tensors; the
stage arithmetic is :mod:`contnet.integrate.rk`'s, the step of each kind of scheme a
stepper's (:mod:`contnet.integrate.steppers`), the memory-saving backprop modes
:mod:`contnet.integrate.backprop`'s. Stage times follow the open-interval rule of
:func:`contnet.schemes.stage_times`. Every step time is a Python float known before the
loop starts, so the loop has no host-device synchronisation and unrolls into one graph
under ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .. import ops, schemes
from . import adaptive
from .backprop import Stepwise
from .per_sample import check_inference, solve_per_sample
from .steppers import LMStepper, march, stepper_class, stepper_for

__all__ = ["odeint", "rate_times", "fixed_stats", "BACKPROP_MODES"]

BACKPROP_MODES = ("direct", "checkpoint", "adjoint")


def rate_times(
    scheme, n_steps: int, t0: float = 0.0, t1: float = 1.0, *, adjoint: bool = False
) -> list[float]:
    """Every distinct time at which :func:`odeint` evaluates the rate, in order of first
    use; with ``adjoint``, also those of the steps taken back in ``backprop="adjoint"``."""
    sch = schemes.get(scheme)
    cls = stepper_class(sch)
    rows = (
        cls.times_of(sch, n_steps, t0, t1, adjoint=True)
        if adjoint and cls.reversible
        else cls.times_of(sch, n_steps, t0, t1)
    )
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
    params=None,
    recompute=None,
    lm_k=None,
    rtol=None,
    atol=None,
    controller=None,
    jump_t=(),
    kink_t=(),
    stats=None,
    per_sample=False,
    cells=None,
    update_factors=None,
) -> torch.Tensor:
    """Integrate ``dx/dt = f(t, x)`` from ``x(t0) = x0`` to ``t1`` in ``n_steps`` equal steps,
    or, with ``rtol``, in steps chosen to meet a tolerance.

    Args:
        f: the rate, called as ``f(t, x)`` with a Python float ``t`` and a tensor ``x`` of
            ``x0``'s shape; returns a tensor of the same shape.
        x0: initial state (float32, float64, float16 or bfloat16; any shape and layout).
        scheme: a name from :func:`contnet.schemes.names` or a ``ButcherTableau``.
        n_steps: number of equal steps, ``h = (t1 - t0) / n_steps``.
        t0, t1: integration interval (``t1 < t0`` integrates backwards).
        backprop: how gradients flow:

            - ``"direct"``: autograd through every stage (memory grows with steps x stages
              x the rate's intermediates);
            - ``"checkpoint"``: exact gradients, keeping only the states at step boundaries
              and recomputing each step's stages during backward;
            - ``"adjoint"``: memory independent of ``n_steps`` (Sander, Ablin, Peyre 2022):
              backward reconstructs ``x_n`` from ``x_{n+1}`` by stepping the same scheme
              with ``-h``, then differentiates that step exactly at the reconstructed
              state. Approximate: the error falls with ``n_steps`` when the rate is smooth
              in time (order 1 for euler, 2 for heun). Runge-Kutta schemes only.

            With ``checkpoint`` and ``adjoint`` gradients flow to ``x0`` and to ``params``.
            A ``checkpoint`` gradient taken with ``create_graph=True`` can be
            differentiated again (that backward recomputes the pass with a graph: memory
            as ``direct``); ``adjoint`` refuses ``create_graph=True``. Inside a
            ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``functional_call``
            ensembles) and under forward-mode AD (``torch.autograd.forward_ad``) both step
            as ``direct``: the transform differentiates the steps themselves, so the
            gradients are exact (also for ``adjoint``) and the memory is ``direct``'s.
        trajectory: if true, return the states at the ``n_steps + 1`` step boundaries
            stacked along a new first dimension instead of the final state (``direct``).
        params: tensors the rate depends on that need gradients, for ``checkpoint`` and
            ``adjoint`` (default: ``f.parameters()`` if ``f`` is an ``nn.Module``; tensors a
            plain function closes over get no gradient unless listed). List the tensors
            the rate reads: none may be computed from another one listed.
        recompute: a callable returning a context manager entered while steps are
            recomputed in backward (e.g. to keep batch-norm statistics from updating twice).
        lm_k: for ``scheme="lm"``, the coefficients ``k_n``: a tensor of ``n_steps`` values
            (differentiable) or a callable of ``t``.
        rtol, atol: adaptive steps (``rtol`` set; ``atol`` defaults to ``rtol``) with an
            embedded pair as ``scheme`` (``heun_euler``, ``bosh3``, ``dopri5``, ``tsit5``):
            each step's error estimate, in the root mean square over every element of
            ``err / (atol + rtol max(|x_n|, |x_n+1|))``, is at most 1 (see
            :mod:`contnet.integrate.adaptive`). The controller runs without gradients and
            records the accepted steps; with gradients enabled the steps on that grid are
            taken again, differentiated as fixed steps in the ``backprop`` mode (so under
            ``torch.no_grad`` the solve is one pass, with gradients two). With
            ``recompute`` the controller's pass runs inside it and the steps are always
            taken again (batch statistics count the accepted steps once). ``n_steps`` and
            ``trajectory`` are fixed-step options.
        controller: a :class:`contnet.integrate.Controller` (PI by default;
            ``Controller.integral()`` is torchdiffeq's; first step, ``max_steps``,
            ``min_step``, ``jumps``).
        jump_t, kink_t: times where the rate jumps (weights piecewise in time) or has a
            kink (piecewise linear in time): adaptive steps land on them and never cross
            one; after a jump the rate is evaluated again. ``ContinuousBlock`` passes its
            basis's.
        stats: a dict, filled with ``evaluations`` (rate evaluations), ``accepted`` and
            ``rejected`` steps and ``steps`` (the accepted ``(t, t_next, h)``) of an
            adaptive solve; per sample (int64 tensors, no ``steps``) with ``per_sample``;
            of fixed steps, their counts.
        per_sample: with ``rtol``, every sample (along dim 0) its own steps, leaving the
            batch at ``t1`` (:mod:`contnet.integrate.per_sample`): an inference mode,
            refused where gradients are required; forward in time only.
        cells: with ``per_sample``, the edges of the cells of time on which the rate is
            constant in ``t`` (weights ``piecewise_constant`` in depth, the rate's only
            dependence on time): samples whose stage times share a cell share one rate
            call. Without it, samples share a call only at equal times.
        update_factors: fixed steps only: per step, None or the factor of that step's
            update, a tensor that broadcasts against the state (stochastic depth: 0 for a
            sample whose update is dropped, ``1 / (1 - p)`` for one kept; LM-ResNet scales
            its rate term only). Constants: ``checkpoint`` recomputes each step with the
            same factors; ``adjoint`` undoes a scaled step by its back step scaled alike
            (exact for a dropped update).

    A stage at a step's right end (``c_i = 1``) receives the float just inside the step
    (the open-interval rule; see :func:`contnet.schemes.stage_times`).
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, x), got {type(f).__name__}")
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got {x0.dtype}")
    t0, t1 = schemes.check_interval(t0, t1)
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"unknown backprop {backprop!r}; expected one of {list(BACKPROP_MODES)}")
    if rtol is None and atol is None and (controller is not None or jump_t or kink_t or per_sample):
        raise ValueError(
            "controller, jump_t, kink_t and per_sample are options of adaptive steps: set rtol"
        )
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be a bool, got {per_sample!r}")
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict (filled in place), got {type(stats).__name__}")
    if cells is not None and not per_sample:
        raise ValueError("cells is an option of per_sample=True")
    if rtol is not None or atol is not None:
        if update_factors is not None:
            raise ValueError("update_factors need fixed steps (n_steps), not rtol")
        jump_t, kink_t = _times("jump_t", jump_t), _times("kink_t", kink_t)
        if rtol is None:
            raise ValueError("atol needs rtol: adaptive steps are asked for by rtol")
        if n_steps != 1:
            raise ValueError(
                f"n_steps={n_steps} and rtol={rtol}: fixed steps or a tolerance, not both"
            )
        if trajectory:
            raise ValueError("trajectory=True needs fixed steps (n_steps), not rtol")
        sch = adaptive.pair_of(scheme)
        rtol, atol = adaptive.check_tolerances(rtol, atol)
        ctrl = adaptive.Controller() if controller is None else controller
        if not isinstance(ctrl, adaptive.Controller):
            raise TypeError(f"controller must be a Controller, got {type(ctrl).__name__}")
        if per_sample:
            return _per_sample(f, x0, sch, t0, t1, rtol, atol, ctrl, jump_t, kink_t, cells, stats)
        again = torch.is_grad_enabled() or recompute is not None
        with recompute() if again and recompute is not None else contextlib.nullcontext():
            x1, grid, counts = adaptive.solve(f, x0, sch, t0, t1, rtol, atol, ctrl, jump_t, kink_t)
        if stats is not None:
            stats.update(counts, steps=grid)
        if not again:
            return x1
        stepper = adaptive.GridStepper(f, sch, grid)
    else:
        sch = schemes.get(scheme)
        n_steps = schemes.check_n_steps(n_steps)
        stepper = stepper_for(f, sch, n_steps, t0, t1, lm_k)
        stepper.factors = _factors(update_factors, n_steps)
        if stats is not None:
            stats.update(fixed_stats(sch, n_steps))
    # torch.func transforms and forward-mode AD differentiate (or batch) the steps
    # themselves: as direct
    if (
        backprop == "direct"
        or not torch.is_grad_enabled()
        or ops.in_func_transform()
        or ops.in_forward_ad()
    ):
        path = []
        keep = (lambda n, s: path.append(s[0])) if trajectory else None
        state = march(stepper, stepper.start(x0), before=keep)
        return torch.stack(path + [state[0]]) if trajectory else state[0]
    if trajectory:
        raise ValueError(f"trajectory=True needs backprop='direct', got backprop={backprop!r}")
    if backprop == "adjoint" and not stepper.reversible:
        raise ValueError(
            f"backprop='adjoint' needs a Runge-Kutta scheme (it steps back with -h); scheme "
            f"{sch.name!r} is multistep: use backprop='checkpoint'"
        )
    if params is None:
        if not isinstance(f, nn.Module):
            # a plain function's tensors are out of sight: their gradients would be lost
            raise ValueError(
                f"backprop={backprop!r} differentiates x0 and the tensors listed in params; f "
                "is a plain function, whose tensors it cannot see: pass params=[...] (the "
                "tensors f reads that need gradients; params=[] if none), or make f an "
                "nn.Module"
            )
        params = list(f.parameters())
    params = [p for p in params if isinstance(p, torch.Tensor)]
    if isinstance(stepper, LMStepper) and stepper.coeffs.requires_grad:
        params.append(stepper.coeffs)
    return Stepwise.apply(stepper, backprop, recompute or contextlib.nullcontext, x0, *params)


def _factors(factors, n_steps: int):
    """``update_factors`` checked: None, or one entry per step, each None or a tensor."""
    if factors is None:
        return None
    factors = list(factors)
    if len(factors) != n_steps:
        raise ValueError(
            f"update_factors must hold one entry per step ({n_steps}), got {len(factors)}"
        )
    for n, s in enumerate(factors):
        if s is not None and not isinstance(s, torch.Tensor):
            raise TypeError(f"update_factors[{n}] must be None or a tensor, got {type(s).__name__}")
    return factors


def fixed_stats(scheme, n_steps: int) -> dict:
    """Rate evaluations, accepted and rejected steps of ``n_steps`` fixed steps of ``scheme``
    (ab2's first step is Heun's: one evaluation more)."""
    sch = schemes.get(scheme)
    extra = 1 if isinstance(sch, schemes.AdamsBashforth2) else 0
    return {"evaluations": sch.stages * n_steps + extra, "accepted": n_steps, "rejected": 0}


def _times(name, ts) -> tuple[float, ...]:
    try:
        out = tuple(float(t) for t in ts)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of real numbers, got {ts!r}") from None
    if not all(map(math.isfinite, out)):
        raise ValueError(f"{name} must be finite, got {ts!r}")
    return out


def _per_sample(f, x0, sch, t0, t1, rtol, atol, ctrl, jump_t, kink_t, cells, stats):
    if x0.dim() == 0:
        raise ValueError("per_sample=True needs x0 with a batch dimension (dim 0)")
    if t1 < t0:
        raise ValueError(f"per_sample=True integrates forward in time, got t0={t0} > t1={t1}")
    check_inference(x0, f)
    if cells is not None:
        cells = _times("cells", cells)
    x1, counts = solve_per_sample(f, x0, sch, t0, t1, rtol, atol, ctrl, jump_t, kink_t, cells)
    if stats is not None:
        stats.update(counts)
    return x1
