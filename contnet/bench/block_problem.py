"""The problem the block benchmarks time: a continuous block and its pure-PyTorch
stepping, in every implementation.

The rate is ContinuousNet's ``R(t, x) = scale * relu(conv(relu(conv(x; W1(t))); W2(t)))``
(3x3 convolutions, no bias) with weights in a ``piecewise_constant`` or ``fem_linear``
basis of ``K`` nodes, integrated over ``[0, 1]`` in ``n_steps`` steps. Implementations,
timed side by side in one run:

- ``contnet``: ``ContinuousBlock(ConvUnit(...))`` as a user calls it (fused stage
  epilogues, one interpolation launch for all stage weights);
- ``hand``: a straightforward pure-PyTorch Runge-Kutta loop over the Butcher tableau,
  interpolating the weights at every stage;
- ``torchdiffeq``: ``torchdiffeq.odeint`` with a fixed step (its ``rk4`` is the 3/8 rule;
  classic rk4 runs through torchdiffeq's own ``rk4_step_func``), the rate indexing the
  weights with tensor time as a torchdiffeq user writes it;
- ``compile``: ``torch.compile`` of the hand loop;
- ``floor``: only the convolutions and activations the scheme needs, back to back, with
  the weights of every stage precomputed in the convolutions' layout (channels_last
  filters with a channels_last input) and scaled so that its values stay normal floats:
  the limit.

Reported per configuration: median ms of forward (no grad) and forward+backward (grads of
the input and the weights), their ratios to ``floor`` and to ``hand``, and the memory of
forward+backward (peak allocated above what was allocated before it,
:func:`bench.common.peak_bytes`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import basis as basis_lib
from .. import schemes
from ..block import ContinuousBlock
from ..nn import ConvUnit
from . import common

SHAPES = {
    # name: (batch, channels, pixels)
    "stage1": (128, 16, 32),
    "stage2": (128, 32, 16),
    "stage3": (128, 64, 8),
    "wide": (64, 256, 16),
    # arithmetic negligible: the host time of every stage (ms / (stages * n_steps))
    "host": (1, 4, 4),
}


IMPLS = ("floor", "contnet", "hand", "torchdiffeq", "compile")


FLOOR_GAIN = 2.0


class Problem:
    """One configuration: weights, input, and every implementation of the block."""

    def __init__(
        self, batch, channels, pixels, basis, K, scheme, n_steps, device, channels_last, scale=0.5
    ):
        g = torch.Generator().manual_seed(0)
        std = 1.0 / math.sqrt(9 * channels)
        shape = (K, channels, channels, 3, 3)
        self.theta1 = (torch.randn(shape, generator=g) * std).to(device).requires_grad_()
        self.theta2 = (torch.randn(shape, generator=g) * std).to(device).requires_grad_()
        x = torch.randn(batch, channels, pixels, pixels, generator=g).to(device)
        self.x = (
            x.contiguous(memory_format=torch.channels_last) if channels_last else x
        ).requires_grad_()
        self.basis = basis_lib.get(basis, K)
        self.scheme, self.n_steps, self.scale = scheme, n_steps, scale
        self.tab = schemes.get(scheme)
        unit = ConvUnit(
            channels,
            n_basis=K,
            basis=basis,
            act="relu",
            norm=None,
            preact=False,
            bias=False,
            scale=scale,
        ).to(device)
        with torch.no_grad():
            unit.conv1.weight.copy_(self.theta1)
            unit.conv2.weight.copy_(self.theta2)
        if channels_last:
            unit = unit.to(memory_format=torch.channels_last)
        self.block = ContinuousBlock(unit, scheme=scheme, n_steps=n_steps)
        # the stage times, in order of evaluation, and the floor's weights at each, in the
        # layout the convolution takes them in (channels_last filters for a channels_last
        # input: an NCHW weight would be converted inside every call, which is not the limit)
        times = [t for row in schemes.stage_times(self.tab, n_steps) for t in row]
        layout = torch.channels_last if channels_last else torch.contiguous_format

        # each filter times 2: the floor chains its rates without the residual, and with
        # the rate's own weights its state would shrink ~4x a stage, to denormals (slow on
        # some CPUs) and zeros by the end; at this gain it stays in the normal range (the
        # arithmetic is the same whatever the values)
        def floor_weight(theta, t):
            w = FLOOR_GAIN * self._w(theta, t).detach()
            return w.clone(memory_format=layout).requires_grad_()

        self.floor_w = [(floor_weight(self.theta1, t), floor_weight(self.theta2, t)) for t in times]
        self._compiled = None

    # the rate, as written by hand --------------------------------------------------
    def _w(self, theta, t):
        return at_time(self.basis, theta, t)

    def _rate_w(self, x, w1, w2):
        return self.scale * F.relu(F.conv2d(F.relu(F.conv2d(x, w1, padding=1)), w2, padding=1))

    def rate(self, t, x, theta1, theta2):
        return self._rate_w(x, self._w(theta1, t), self._w(theta2, t))

    # implementations -----------------------------------------------------------------
    def hand(self, x, theta1, theta2):
        return hand_loop(self.tab, self.n_steps, x, lambda t, y: self.rate(t, y, theta1, theta2))

    def contnet(self, x, theta1, theta2):
        return self.block(x)

    def floor(self, x, theta1, theta2):
        for w1, w2 in self.floor_w:
            x = self._rate_w(x, w1, w2)
        return x

    def torchdiffeq(self, x, theta1, theta2):
        K, fam = self.basis.n_basis, self.basis.family

        def f(t, y):
            # weights from tensor time, as a torchdiffeq user writes it (no host sync)
            if fam == "piecewise_constant":
                k = torch.clamp((t * K).floor().long(), max=K - 1)
                return self._rate_w(y, theta1[k], theta2[k])
            s = t * (K - 1)
            j = torch.clamp(s.floor().long(), max=K - 2)
            a = (s - j).to(theta1.dtype)
            return self._rate_w(
                y, theta1[j] * (1 - a) + theta1[j + 1] * a, theta2[j] * (1 - a) + theta2[j + 1] * a
            )

        return torchdiffeq_fixed(f, x, self.scheme, self.n_steps)

    def compile(self, x, theta1, theta2):
        if self._compiled is None:
            torch._dynamo.reset()
            self._compiled = torch.compile(self.hand)
        return self._compiled(x, theta1, theta2)

    def inputs(self, impl):
        if impl == "floor":
            return [self.x] + [w for pair in self.floor_w for w in pair]
        if impl == "contnet":
            return [self.x, self.block.unit.conv1.weight, self.block.unit.conv2.weight]
        return [self.x, self.theta1, self.theta2]


def at_time(basis, theta, t):
    """``theta(t)`` from the node stack ``theta``, as a user writes the interpolation."""
    (k0, w0), *rest = basis.coefficients(t)
    w = theta[k0] if not rest and w0 == 1.0 else theta[k0] * w0
    for k, c in rest:
        w = w + theta[k] * c
    return w


def hand_loop(tab, n_steps: int, x, rate):
    """A straightforward pure-PyTorch Runge-Kutta loop over the Butcher tableau ``tab``,
    with the same stage times as contnet (the open-interval rule), so both compute one
    function."""
    h = 1.0 / n_steps
    for times in schemes.stage_times(tab, n_steps):
        ks = []
        for i in range(tab.stages):
            xi = x
            for j in range(i):
                if tab.a[i][j] != 0.0:
                    xi = xi + (h * tab.a[i][j]) * ks[j]
            ks.append(rate(times[i], xi))
        for i in range(tab.stages):
            if tab.b[i] != 0.0:
                x = x + (h * tab.b[i]) * ks[i]
    return x


def torchdiffeq_fixed(f, x, scheme: str, n_steps: int):
    """``torchdiffeq.odeint`` of ``f`` over ``[0, 1]`` with ``n_steps`` fixed steps of
    ``scheme`` (classic rk4 through :func:`register_classic_rk4`)."""
    import torchdiffeq

    method = {"rk4": "rk4_classic", "rk4_38": "rk4"}.get(scheme, scheme)
    ts = torch.tensor([0.0, 1.0], device=x.device)
    return torchdiffeq.odeint(f, x, ts, method=method, options={"step_size": 1.0 / n_steps})[-1]


def register_classic_rk4():
    """torchdiffeq's fixed-grid rk4 is the 3/8 rule; classic rk4 through its own step function."""
    import importlib

    tde = importlib.import_module("torchdiffeq._impl.odeint")
    from torchdiffeq._impl.fixed_grid import FixedGridODESolver
    from torchdiffeq._impl.misc import Perturb
    from torchdiffeq._impl.rk_common import rk4_step_func

    class ClassicRK4(FixedGridODESolver):
        order = 4

        def _step_func(self, func, t0, dt, t1, y0):
            f0 = func(t0, y0, perturb=Perturb.NEXT if self.perturb else Perturb.NONE)
            return rk4_step_func(func, t0, dt, t1, y0, f0=f0, perturb=self.perturb), f0

    tde.SOLVERS.setdefault("rk4_classic", ClassicRK4)


def measure(problem: Problem, impls, device, rounds, min_run_time):
    fwd, fwdbwd, memory = {}, {}, {}
    for impl in impls:
        run = getattr(problem, impl)
        ins = problem.inputs(impl)

        def forward(run=run):
            with torch.no_grad():
                return run(*problem.inputs("hand"))

        def train_step(run=run, ins=ins):
            out = run(*problem.inputs("hand"))
            return torch.autograd.grad(out.sum(), ins)

        train_step()  # warm-up (compiles, caches the interpolation coefficients)
        fwd[impl], fwdbwd[impl] = forward, train_step
        memory[impl] = common.peak_bytes(train_step, device)
    t_fwd = common.time_side_by_side(fwd, rounds=rounds, min_run_time=min_run_time, device=device)
    t_fb = common.time_side_by_side(fwdbwd, rounds=rounds, min_run_time=min_run_time, device=device)
    with torch.no_grad():
        ref = problem.hand(*problem.inputs("hand"))
        check = (
            problem.contnet(*problem.inputs("hand")) - ref
        ).abs().max().item() / ref.abs().max().item()
    return t_fwd, t_fb, memory, check, {"forward": fwd, "forward_backward": fwdbwd}
