"""The memory-saving backprop modes: ``checkpoint`` (exact: keeps the states at step
boundaries, recomputes each step in backward) and ``adjoint`` (Sander, Ablin, Peyre 2022:
keeps only the output, rebuilds each step's input by stepping back). Both recompute steps
under the forward's autocast and random states (:class:`Replay`)."""

from __future__ import annotations

import contextlib

import torch

from .steppers import march


class Replay:
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
    ``gate["open"]`` is set (see :meth:`Stepwise._backward_graphed`)."""

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


class Stepwise(torch.autograd.Function):
    """Forward without a graph; backward step by step, each step's graph rebuilt from its
    input state and differentiated exactly. The input state comes from the states kept at
    step boundaries (``checkpoint``) or from stepping back from the output (``adjoint``),
    and is stepped again under the forward's autocast and random states (:class:`Replay`).
    A ``checkpoint`` backward under ``create_graph`` recomputes the whole pass instead,
    with a graph, so that its gradient has one."""

    @staticmethod
    def forward(ctx, stepper, mode, recompute, x0, *params):
        kept, replay = [], Replay(x0)

        def before(n, state):
            if mode == "checkpoint":
                kept.append(state)
            replay.save_rng()

        with torch.no_grad():
            state = march(stepper, stepper.start(x0), before=before)
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
            return Stepwise._backward_stepwise(ctx, grad, kept)
        if ctx.mode == "checkpoint":
            return Stepwise._backward_graphed(ctx, grad, kept[0])
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
            state = march(stepper, stepper.start(x0), around=ctx.replay.rng_state)
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
                g_state, g_params = _step_vjp(ctx, n, state, g_state, [params[i] for i in wanted])
            for i, g in zip(wanted, g_params):
                if g is not None:
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
            state_after = state
        return (None, None, None, g_state[0], *grad_params)


def _step_vjp(ctx, n: int, state: tuple, g_state: tuple, params: list):
    """Step ``n`` rebuilt from its input ``state`` with a graph and differentiated: the
    gradients of its input state and of ``params`` given those of its output."""
    with torch.enable_grad(), ctx.replay.rng_state(n):
        inputs = tuple(None if t is None else t.detach().requires_grad_() for t in state)
        out = ctx.stepper.step(n, inputs)
        pairs = [
            (o, g)
            for o, g in zip(out, g_state)
            if g is not None and o is not None and o.requires_grad
        ]
        targets = [t for t in inputs if t is not None] + params
        grads = (
            torch.autograd.grad(
                [o for o, _ in pairs], targets, [g for _, g in pairs], allow_unused=True
            )
            if pairs
            else [None] * len(targets)
        )
    it = iter(grads)
    return tuple(None if t is None else next(it) for t in inputs), list(it)
