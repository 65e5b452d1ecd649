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

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from . import ops, schemes

__all__ = ["odeint", "rate_times", "BACKPROP_MODES"]

BACKPROP_MODES = ("direct", "checkpoint", "adjoint")


def _check_rate(k, x: torch.Tensor, t: float) -> torch.Tensor:
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"f(t, x) must return a tensor, got {type(k).__name__} at t={t}")
    if k.shape != x.shape:
        raise ValueError(
            f"f(t, x) must return a tensor of x's shape {tuple(x.shape)}, got {tuple(k.shape)} at t={t}"
        )
    if k.device != x.device:
        raise ValueError(
            f"f(t, x) must return a tensor on x's device {x.device}, got {k.device} at t={t}"
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
    # while every tensor of the step has x's dtype (the common case) the op itself, looked
    # up once; a stage of another dtype (autocast) and the rest of the step promote
    dtype, kernel = x.dtype, ops.epilogue_kernel(x)
    for i, st in enumerate(_fused_plan(tab)):
        y, bias, act, scale = split(times[i], xi)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or y.device != x.device:
            _check_rate(y, x, times[i])
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
    return acc


# ----------------------------------------------------------------------------- steppers
# A stepper advances a state -- a tuple of tensors -- by one step: (x,) for Runge-Kutta
# schemes; (x, f_{n-1}) for ab2 and (x, x_{n-1}) for lm, whose second entry is None
# before the first step. The loop, checkpointing and the adjoint all drive steppers.
class _RKStepper:
    def __init__(self, f, tab, n_steps, t0, t1):
        self.f, self.tab, self.n_steps = f, tab, n_steps
        self.h = (t1 - t0) / n_steps
        self.times = schemes.stage_times(tab, n_steps, t0, t1)
        self.back_times = schemes.stage_times(tab, n_steps, t1, t0)

    def start(self, x0):
        return (x0,)

    def step(self, n, state):
        return (rk_step(self.f, state[0], self.times[n], self.h, self.tab),)

    def back(self, n, state):
        """The state before step ``n`` from the state after it: the same scheme stepped
        with ``-h`` over the same interval (exact up to the scheme's local error)."""
        return (
            rk_step(self.f, state[0], self.back_times[self.n_steps - 1 - n], -self.h, self.tab),
        )


class _AB2Stepper:
    """Adams-Bashforth 2: ``x_{n+1} = x_n + h (3/2 f_n - 1/2 f_{n-1})``; the first step is a
    Heun step (keeps order 2)."""

    def __init__(self, f, n_steps, t0, t1):
        self.f, self.n_steps = f, n_steps
        self.h = (t1 - t0) / n_steps
        self.heun = schemes.get("heun")
        self.times = schemes.stage_times(self.heun, n_steps, t0, t1)

    def start(self, x0):
        return (x0, None)

    def step(self, n, state):
        x, f_prev = state
        times, h = self.times[n], self.h
        fn = _check_rate(self.f(times[0], x), x, times[0])
        if f_prev is None:
            k2 = _check_rate(
                self.f(times[1], ops.combine_unchecked(x, [fn], h, [1.0])), x, times[1]
            )
            return ops.combine_unchecked(x, [fn, k2], h, list(self.heun.b)), fn
        return ops.combine_unchecked(x, [fn, f_prev], h, [1.5, -0.5]), fn


class _LMStepper:
    """LM-ResNet (Lu et al. 2018): ``x_{n+1} = (1 - k_n) x_n + k_n x_{n-1} + h f(t_n, x_n)``,
    ``k_n`` learnable; the first step is an Euler step. The update goes through the
    stage-accumulation op with learned coefficients ``(k_n, -k_n, h)`` on
    ``(x_{n-1}, x_n, f_n)``, so ``k`` gets its gradient from the op."""

    def __init__(self, f, n_steps, t0, t1, lm_k):
        self.f, self.n_steps = f, n_steps
        self.h = (t1 - t0) / n_steps
        self.times = schemes.stage_times("euler", n_steps, t0, t1)
        k = _lm_coefficients(lm_k, n_steps, self.times)
        self.coeffs = torch.stack([k, -k, torch.full_like(k, self.h)], 1)  # (n_steps, 3)

    def start(self, x0):
        return (x0, None)

    def step(self, n, state):
        x, x_prev = state
        t = self.times[n][0]
        fn = _check_rate(self.f(t, x), x, t)
        if x_prev is None:
            return ops.combine_unchecked(x, [fn], self.h, [1.0]), x
        return ops.combine_learned_unchecked(x, [x_prev, x, fn], 1.0, self.coeffs[n]), x


def _lm_coefficients(lm_k, n_steps, times):
    if lm_k is None:
        raise ValueError(
            "scheme 'lm' needs lm_k: its learnable k_n, a tensor of n_steps values or a "
            "callable of t (ContinuousBlock(scheme='lm') owns one)"
        )
    if callable(lm_k):
        return torch.stack([torch.as_tensor(lm_k(row[0])).reshape(()) for row in times])
    if not isinstance(lm_k, torch.Tensor) or lm_k.shape != (n_steps,):
        shape = tuple(lm_k.shape) if isinstance(lm_k, torch.Tensor) else type(lm_k).__name__
        raise ValueError(
            f"lm_k must be a tensor of shape ({n_steps},) (one k per step), got {shape}"
        )
    return lm_k


def _stepper(f, sch, n_steps, t0, t1, lm_k):
    if isinstance(sch, schemes.ButcherTableau):
        return _RKStepper(f, sch, n_steps, t0, t1)
    if sch.name == "ab2":
        return _AB2Stepper(f, n_steps, t0, t1)
    return _LMStepper(f, n_steps, t0, t1, lm_k)


# ----------------------------------------------------------------------------- backprop modes
class _Replay:
    """What a step recomputed in backward must see as it saw in forward: the autocast
    state (of x's device and of the CPU) and the random number generators' states at the
    step's start (CPU, and x's device if another), so that dropout draws the same masks.
    The caller's generators are put back afterwards; a pass without autocast enters no
    autocast context. (While a CUDA graph is captured the device's generator is left to
    the graph.)"""

    def __init__(self, x0: torch.Tensor):
        device = x0.device
        self.devices = [] if device.type == "cpu" else [device.index or 0]
        self.module = None if device.type == "cpu" else torch.get_device_module(device.type)
        self.autocast = [
            (d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
            for d in dict.fromkeys((device.type, "cpu"))
        ]
        self.cache = torch.is_autocast_cache_enabled()
        self.rng: list = []  # the states at every step's start

    def _rng_now(self):
        # a device's generator cannot be read while a graph is captured on it (a captured
        # step reads its random offsets from the graph's own state instead)
        capturing = getattr(self.module, "is_current_stream_capturing", None)
        if self.module is None or (capturing is not None and capturing()):
            return torch.get_rng_state(), []
        return torch.get_rng_state(), [self.module.get_rng_state(i) for i in self.devices]

    def _set_rng(self, states) -> None:
        torch.set_rng_state(states[0])
        for i, state in zip(self.devices, states[1]):
            self.module.set_rng_state(state, i)

    def save_rng(self) -> None:
        # a step that drew nothing leaves the states as they were: the next step shares
        # the previous entry (a CPU generator's state is 5 KB; memory stays flat in steps)
        now = self._rng_now()
        if self.rng and _same_states(now, self.rng[-1]):
            now = self.rng[-1]
        self.rng.append(now)

    @contextlib.contextmanager
    def autocast_state(self):
        with contextlib.ExitStack() as stack:
            if any(on or torch.is_autocast_enabled(d) for d, on, _ in self.autocast):
                for d, on, dtype in self.autocast:
                    stack.enter_context(
                        torch.autocast(d, dtype=dtype, enabled=on, cache_enabled=self.cache)
                    )
            yield

    @contextlib.contextmanager
    def rng_state(self, n: int):
        now = self._rng_now()
        self._set_rng(self.rng[n])
        try:
            yield
        finally:
            self._set_rng(now)


def _same_states(a, b) -> bool:
    return torch.equal(a[0], b[0]) and len(a[1]) == len(b[1]) and all(map(torch.equal, a[1], b[1]))


class _Gate(torch.autograd.Function):
    """``x`` itself (a view); its backward passes the gradient on only once
    ``gate["open"]`` is set (see :meth:`_Stepwise._backward_graphed`)."""

    @staticmethod
    def forward(ctx, x, gate):
        ctx.gate = gate
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad if ctx.gate["open"] else None), None


_ADJOINT_ONCE = (
    "backprop='adjoint' takes no create_graph: its gradient is approximate and has no graph "
    "to differentiate again; for a second derivative use backprop='checkpoint' (exact, "
    "recomputed with a graph) or 'direct', under contnet.ops.use_reference() where the "
    "fused ops run"
)


class _Stepwise(torch.autograd.Function):
    """Forward without a graph; backward step by step, each step's graph rebuilt from its
    input state and differentiated exactly. The input state comes from the states kept at
    step boundaries (``checkpoint``) or from stepping back from the output (``adjoint``),
    and is stepped again under the forward's autocast and random states (:class:`_Replay`).
    A ``checkpoint`` backward under ``create_graph`` recomputes the whole pass instead,
    with a graph, so that its gradient has one."""

    @staticmethod
    def forward(ctx, stepper, mode, recompute, x0, *params):
        kept, replay = [], _Replay(x0)
        with torch.no_grad():
            state = stepper.start(x0)
            for n in range(stepper.n_steps):
                if mode == "checkpoint":
                    kept.append(state)
                replay.save_rng()
                state = stepper.step(n, state)
        ctx.stepper, ctx.mode, ctx.recompute, ctx.params = stepper, mode, recompute, params
        ctx.replay = replay
        ctx.layout = (
            [[t is not None for t in s] for s in kept] if mode == "checkpoint" else [[True]]
        )
        tensors = (
            [t for s in kept for t in s if t is not None] if mode == "checkpoint" else [state[0]]
        )
        ctx.save_for_backward(*tensors)
        return state[0]

    @staticmethod
    def backward(ctx, grad):
        saved = iter(ctx.saved_tensors)
        kept = [tuple(next(saved) if has else None for has in layout) for layout in ctx.layout]
        if not torch.is_grad_enabled():  # no graph asked for (create_graph=False)
            return _Stepwise._backward_stepwise(ctx, grad, kept)
        if ctx.mode == "checkpoint":
            return _Stepwise._backward_graphed(ctx, grad, kept[0])
        # adjoint's gradient is approximate and has no graph to differentiate again
        raise RuntimeError(_ADJOINT_ONCE)

    @staticmethod
    def _backward_graphed(ctx, grad, start):
        """``checkpoint`` under ``create_graph``: the whole pass recomputed from the input
        (saved with its history) with a graph, and differentiated with one, so that the
        gradient can be differentiated again (memory as ``direct`` for this backward)."""
        stepper, params = ctx.stepper, ctx.params
        take_x0 = ctx.needs_input_grad[3]
        wanted = [i for i, p in enumerate(params) if p.requires_grad]
        # the pass starts from the input behind a gate shut for this vjp: the input's own
        # history (which may read the same parameters: a block applied twice) is the
        # caller's to differentiate, through the gradient returned for x0
        gate = {"open": False}
        x0 = _Gate.apply(start[0], gate) if start[0].requires_grad else start[0]
        with ctx.recompute(), ctx.replay.autocast_state():
            state = stepper.start(x0)
            for n in range(stepper.n_steps):
                with ctx.replay.rng_state(n):
                    state = stepper.step(n, state)
        targets = ([x0] if take_x0 else []) + [params[i] for i in wanted]
        grads = list(
            torch.autograd.grad(state[0], targets, grad, create_graph=True, allow_unused=True)
            if targets and state[0].requires_grad
            else [None] * len(targets)
        )
        gate["open"] = True  # differentiating the gradients again goes on into the history
        g_x0 = grads.pop(0) if take_x0 else None
        grad_params = [None] * len(params)
        for i, g in zip(wanted, grads):
            grad_params[i] = g
        return (None, None, None, g_x0, *grad_params)

    @staticmethod
    def _backward_stepwise(ctx, grad, kept):
        stepper, params = ctx.stepper, ctx.params
        wanted = [i for i, p in enumerate(params) if p.requires_grad]
        grad_params = [None] * len(params)
        state_after = kept[0] if ctx.mode == "adjoint" else None
        g_state = (grad,) + (None,) * (len(stepper.start(grad)) - 1)
        for n in reversed(range(stepper.n_steps)):
            with ctx.recompute(), ctx.replay.autocast_state():
                if ctx.mode == "checkpoint":
                    state = kept[n]
                else:  # the step back draws the forward step's random numbers too
                    with torch.no_grad(), ctx.replay.rng_state(n):
                        state = stepper.back(n, state_after)
                with torch.enable_grad(), ctx.replay.rng_state(n):
                    inputs = tuple(
                        None if t is None else t.detach().requires_grad_() for t in state
                    )
                    out = stepper.step(n, inputs)
                    pairs = [
                        (o, g)
                        for o, g in zip(out, g_state)
                        if g is not None and o is not None and o.requires_grad
                    ]
                    targets = [t for t in inputs if t is not None] + [params[i] for i in wanted]
                    grads = (
                        torch.autograd.grad(
                            [o for o, _ in pairs], targets, [g for _, g in pairs], allow_unused=True
                        )
                        if pairs
                        else [None] * len(targets)
                    )
            it = iter(grads)
            g_state = tuple(None if t is None else next(it) for t in inputs)
            for i in wanted:
                g = next(it)
                if g is not None:
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
            state_after = state
        return (None, None, None, g_state[0], *grad_params)


def rate_times(
    scheme, n_steps: int, t0: float = 0.0, t1: float = 1.0, *, adjoint: bool = False
) -> list[float]:
    """Every distinct time at which :func:`odeint` evaluates the rate, in order of first
    use; with ``adjoint``, also those of the steps taken back in ``backprop="adjoint"``."""
    sch = schemes.get(scheme)
    if isinstance(sch, schemes.Multistep) and sch.name == "ab2":
        # the first step is a Heun step
        first = schemes.stage_times("heun", n_steps, t0, t1)[0]
        rows = [first] + schemes.stage_times(sch, n_steps, t0, t1)[1:]
    else:
        rows = schemes.stage_times(sch, n_steps, t0, t1)
        if adjoint:
            rows = rows + schemes.stage_times(sch, n_steps, t1, t0)
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
) -> torch.Tensor:
    """Integrate ``dx/dt = f(t, x)`` from ``x(t0) = x0`` to ``t1`` in ``n_steps`` equal steps.

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
            ensembles) both step as ``direct``: the transform differentiates the steps
            themselves, so the gradients are exact (also for ``adjoint``) and the memory is
            ``direct``'s.
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
    sch = schemes.get(scheme)
    n_steps = schemes.check_n_steps(n_steps)
    stepper = _stepper(f, sch, n_steps, t0, t1, lm_k)
    # torch.func transforms differentiate (or batch) the steps themselves: as direct
    if backprop == "direct" or not torch.is_grad_enabled() or ops.in_func_transform():
        state = stepper.start(x0)
        path = [x0] if trajectory else None
        for n in range(n_steps):
            state = stepper.step(n, state)
            if trajectory:
                path.append(state[0])
        return torch.stack(path) if trajectory else state[0]
    if trajectory:
        raise ValueError(f"trajectory=True needs backprop='direct', got backprop={backprop!r}")
    if backprop == "adjoint" and not isinstance(sch, schemes.ButcherTableau):
        raise ValueError(
            f"backprop='adjoint' needs a Runge-Kutta scheme (it steps back with -h); scheme "
            f"{sch.name!r} is multistep: use backprop='checkpoint'"
        )
    if params is None:
        params = list(f.parameters()) if isinstance(f, nn.Module) else []
    params = [p for p in params if isinstance(p, torch.Tensor)]
    if isinstance(stepper, _LMStepper) and stepper.coeffs.requires_grad:
        params.append(stepper.coeffs)
    return _Stepwise.apply(stepper, backprop, recompute or contextlib.nullcontext, x0, *params)
