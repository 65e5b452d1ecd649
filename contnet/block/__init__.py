"""``ContinuousBlock``: a residual stage as the flow of ``dx/dt = R(t, x)`` on ``[0, 1]``."""

from __future__ import annotations

import torch
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor

from .. import ops, schemes
from ..integrate import adaptive, fixed_stats, odeint, rate_times
from ..nn import (
    TimeScalar,
    Unit,
    conforms,
    filters_like,
    frozen_batch_stats,
    node_layout_like,
    reads_weights_ahead,
)
from .arguments import check_replayable, keyword_tensors
from .settings import Manifestation
from .stage_rate import StageRate
from .stochastic_depth import StochasticDepth

__all__ = ["ContinuousBlock", "StochasticDepth", "blocks_of"]


class ContinuousBlock(Manifestation, nn.Module):
    """Integrates a rate module ``unit(t, x)`` from ``t = 0`` to ``1``.

    ``scheme`` (name or tableau), ``n_steps`` and ``backprop`` are plain attributes that
    may be changed at any time: the weights describe ``theta(t)``, not a particular
    discretisation (manifestation invariance). ``n_steps=None`` takes one step per basis
    node, ``unit.n_basis`` (with a ``piecewise_constant`` basis: one step per cell, the
    ResNet-like manifestation). ``backprop``: ``"direct"``, ``"checkpoint"`` (exact, keeps
    only step states) or ``"adjoint"`` (memory independent of ``n_steps``, approximate);
    see :func:`contnet.odeint`. Batch-norm statistics are updated once per forward in every
    mode.

    ``scheme="lm"`` (LM-ResNet) gives the block a learnable ``k(t)`` (``block.lm``, in the
    unit's basis, refined and projected with it).

    ``stochastic_depth=p`` (``stochastic_depth_mode`` ``"row"`` or ``"batch"``,
    ``stochastic_depth_schedule`` ``"linear"``, ``p t``, or ``"constant"``): in training,
    each step's update of a sample dropped with probability ``p(t_n)`` and kept ones
    scaled by ``1 / (1 - p(t_n))`` (LM-ResNet: its rate term only); in eval nothing
    changes (:mod:`contnet.block.stochastic_depth`). ``block.stochastic_depth`` holds the
    settings (a :class:`StochasticDepth`, settable).

    ``rtol`` (and ``atol``, default ``rtol``), settable like ``scheme``: adaptive steps to
    that tolerance with an embedded pair as ``scheme`` (``dopri5``, ``tsit5``, ``bosh3``,
    ``heun_euler``) instead of ``n_steps`` fixed ones (given both, the constructor refuses;
    while ``rtol`` is set the scheme must stay a pair: :meth:`manifest` changes both at
    once); steps land on the basis's cell
    edges (jumps of ``piecewise_constant`` and ``piecewise_linear`` weights, kinks of
    ``fem_linear``'s) and never cross one. ``controller``: a
    :class:`contnet.integrate.Controller`. A pass with gradients takes the accepted steps
    again as fixed steps, differentiated in the ``backprop`` mode; batch-norm statistics
    count the accepted steps once. ``last_stats``: the last forward's rate
    ``evaluations``, ``accepted`` and ``rejected`` steps. ``per_sample=True`` (inference):
    every sample its own steps, leaving the batch when done
    (:mod:`contnet.integrate.per_sample`); ``last_stats`` then holds a count per sample.

    Example::

        unit = contnet.ConvUnit(16, n_basis=4, norm="batch")
        block = contnet.ContinuousBlock(unit, scheme="rk4")   # 4 steps of rk4
        y = block(x)
        block.scheme, block.n_steps = "euler", 16             # another manifestation
    """

    def __init__(
        self,
        unit: Unit,
        *,
        scheme="rk4",
        n_steps: int | None = None,
        backprop="direct",
        rtol=None,
        atol=None,
        controller=None,
        per_sample=False,
        stochastic_depth: float = 0.0,
        stochastic_depth_mode: str = "row",
        stochastic_depth_schedule: str = "linear",
    ):
        super().__init__()
        if not callable(unit):
            raise TypeError(f"unit must be callable as unit(t, x), got {type(unit).__name__}")
        self.unit = unit
        self.lm = None
        is_unit = conforms(unit, Unit)
        if isinstance(schemes.get(scheme), schemes.LMResNet):
            basis = unit.basis if is_unit else None
            self.lm = TimeScalar(basis.n_basis, basis.family) if basis is not None else TimeScalar()
        if rtol is not None and n_steps is not None:
            raise ValueError("give n_steps (fixed steps) or rtol (adaptive steps), not both")
        self.scheme = scheme
        if n_steps is None:
            if not is_unit:
                raise ValueError(
                    "n_steps is required when the unit is not a contnet.nn.Unit (with a "
                    "basis to take it from)"
                )
            n_steps = unit.n_basis
        self.n_steps = n_steps
        self.backprop = backprop
        if rtol is not None:
            adaptive.pair_of(self.scheme)
        self.rtol, self.atol, self.controller = rtol, atol, controller
        self.per_sample = per_sample
        self.stochastic_depth = StochasticDepth(
            stochastic_depth, stochastic_depth_mode, stochastic_depth_schedule
        )
        self.last_stats: dict | None = None

    def forward(self, x, *args, **kwargs):
        """``x(1)`` from ``x(0) = x``. Keyword arguments go to every call of the unit, held
        constant over depth (an attention mask, a conditioning input); the tensors among
        them get their gradients in every backprop mode (exact with ``checkpoint``)."""
        if args:
            raise TypeError(
                f"a ContinuousBlock takes one positional argument, the state x, got "
                f"{1 + len(args)}: pass the others by keyword (block(x, mask=m)); they reach "
                "every call of the unit"
            )
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"x must be a floating-point tensor, got {got}")
        if self._converts(x):
            # the faster layout of the CPU's convolutions (oneDNN), once per call: the
            # state and the stage weights in channels_last, the result in the caller's
            cl = torch.channels_last
            return self._integrate(x.contiguous(memory_format=cl), kwargs, cl).contiguous()
        return self._integrate(x, kwargs, None)

    def _converts(self, x) -> bool:
        """Whether this call runs in channels_last for an NCHW input: on the CPU, for a unit
        that asks for it (``unit.channels_last_on_cpu``: contnet's convolutional units),
        outside ``torch.func`` transforms (vmap cannot query a layout)."""
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and getattr(self.unit, "channels_last_on_cpu", False)
            and (torch.compiler.is_compiling() or not is_functorch_wrapped_tensor(x))
            and x.is_contiguous()
            and not x.is_contiguous(memory_format=torch.channels_last)
        )

    def _integrate(self, x, kwargs, layout):
        if self.rtol is None and (self.atol is not None or self.per_sample):
            what = f"atol={self.atol}" if self.atol is not None else "per_sample=True"
            raise ValueError(f"{what} is set without rtol: set rtol for adaptive steps")
        rate = self._rate(x, kwargs, layout)
        kw = {}
        if isinstance(schemes.get(self.scheme), schemes.LMResNet):
            kw["lm_k"] = self.lm.at(rate_times(self.scheme, self.n_steps))
        if self.backprop != "direct" and torch.is_grad_enabled():
            check_replayable(self.unit, self.backprop)
        if self.backprop != "direct":
            # what the rate reads: the stage-weight table, and the unit's parameters that
            # are not behind it (a tensor and one computed from it must not both be listed)
            tables, behind = [], set()
            if isinstance(rate, StageRate):
                tables = rate.tensors()
                behind = {id(t) for t in _stacks(self.unit.basis_tensors())}
            params = tables + [p for p in self.unit.parameters() if id(p) not in behind]
            if torch.is_grad_enabled():
                params += keyword_tensors(kwargs, params)
            kw["params"] = params
            kw["recompute"] = lambda: frozen_batch_stats(self.unit)
        dropping = self.training and self.stochastic_depth.active
        if self.rtol is not None:
            if dropping:
                raise ValueError(
                    "stochastic depth drops the updates of fixed steps: in training, clear "
                    "the block's tolerance (block.rtol = None) or its stochastic depth"
                )
            return self._adaptive(rate, x, kw, kwargs)
        if dropping:  # each step's factor drawn now: a recomputed step reuses it
            starts = [row[0] for row in schemes.stage_times(self.scheme, self.n_steps, 0.0, 1.0)]
            kw["update_factors"] = self.stochastic_depth.factors(x, starts)
        self.last_stats = fixed_stats(self.scheme, self.n_steps)
        return odeint(
            rate, x, scheme=self.scheme, n_steps=self.n_steps, backprop=self.backprop, **kw
        )

    def _adaptive(self, rate, x, kw, kwargs):
        basis = self.unit.basis if conforms(self.unit, Unit) else None
        jumps, kinks = basis.jumps_and_kinks() if basis is not None else ([], [])
        if self.per_sample:
            return self._sample_by_sample(rate, x, kwargs, basis, jumps, kinks)
        kw.pop("recompute", None)
        if self.training:  # the controller's trial steps leave batch statistics alone
            kw["recompute"] = lambda: frozen_batch_stats(self.unit)
        stats = {}
        out = odeint(
            rate, x, scheme=self.scheme, backprop=self.backprop, rtol=self.rtol,
            atol=self.atol, controller=self.controller, jump_t=jumps, kink_t=kinks,
            stats=stats, **kw,
        )  # fmt: skip
        self.last_stats = {k: stats[k] for k in ("evaluations", "accepted", "rejected")}
        return out

    def _sample_by_sample(self, rate, x, kwargs, basis, jumps, kinks):
        """Every sample its own steps (:mod:`contnet.integrate.per_sample`); with
        ``piecewise_constant`` weights samples whose stages share a cell share a call."""
        if self.training:
            raise ValueError(
                "per_sample=True is an inference mode: call block.eval() (a batch norm in "
                "training mode normalises with its batch's statistics, which a sample's own "
                "steps cannot share)"
            )
        if kwargs:
            raise ValueError(
                f"per_sample=True passes each step a part of the batch; keyword arguments "
                f"({', '.join(kwargs)}) would need the same parts: use per_sample=False"
            )
        cells = None
        if basis is not None and basis.family == "piecewise_constant":
            cells = basis.breakpoints()[1:-1]
        stats = {}
        out = odeint(
            rate, x, scheme=self.scheme, rtol=self.rtol, atol=self.atol,
            controller=self.controller, jump_t=jumps, kink_t=kinks, per_sample=True,
            cells=cells, stats=stats,
        )  # fmt: skip
        self.last_stats = stats
        return out

    def _rate(self, x, kwargs=None, layout=None):
        """The rate for one forward pass: the unit reading its weights at every stage time
        from a table built up front. ``piecewise_constant`` weights are views of the nodes
        (``unbind``, no copy); other bases are interpolated for all stage times and all
        tensors in one launch (:func:`contnet.ops.basis_interp`), except with
        ``checkpoint``/``adjoint`` backprop, where each step interpolates its own. No table
        where reading the weights ahead could differ from calling the unit at every stage
        (:func:`contnet.nn.reads_weights_ahead`: a forward pre-hook, a parametrization,
        a subclass's own forward), nor with a tolerance, whose stage times are not known
        ahead."""
        unit = self.unit
        plain = unit if not kwargs else lambda t, x: unit(t, x, **kwargs)
        if self.rtol is not None or not conforms(unit, Unit) or not reads_weights_ahead(unit):
            return plain
        basis = unit.basis
        if self.backprop != "direct" and basis.family != "piecewise_constant":
            # interpolated weights for every stage time would be held for backward, memory
            # growing with n_steps: checkpoint and adjoint interpolate inside each step
            return plain
        groups = unit.basis_tensors()
        named = isinstance(groups, dict)  # else a layer's own list: weights as a tuple
        flat = _stacks(groups)
        if not flat:
            return plain
        if layout is not None:  # the filter banks in the state's layout, once per call
            flat = [filters_like(layout, w) for w in flat]
        times, lookup = self._lookup(basis, x.device)
        if basis.family == "piecewise_constant":
            nodes = [w.unbind(0) for w in flat]
            rows = [[node[k] for k in lookup] for node in nodes]
        else:
            # in the nodes' layout (channels_last filter banks stay so, not converted in
            # every stage's convolution): the kernels write it so, the reference's
            # contiguous output is converted here
            interp = ops.basis_interp(lookup, flat)
            rows = [node_layout_like(w, v).unbind(0) for w, v in zip(flat, interp)]
        # every tensor at each stage time, then grouped by name: {"conv1": (W, b), ...}
        spans, j = [], 0
        for name, ts in groups.items() if named else ():
            spans.append((name, j, j + len(ts)))
            j += len(ts)
        table = {
            t: {name: column[a:b] for name, a, b in spans} if named else column
            for t, column in zip(times, zip(*rows))
        }
        return StageRate(unit, table, x, kwargs)

    def _lookup(self, basis, device):
        """The stage times of a forward pass (:func:`contnet.integrate.rate_times`) and how
        each reads the basis: the cell index per time for a ``piecewise_constant`` basis,
        else ``phi[s, k] = phi_k(times[s])`` (float64 on ``device``). Cached per
        manifestation outside of compilation (under ``torch.compile`` graph constants) and
        of ``torch.func`` transforms."""

        def build():
            times = rate_times(self.scheme, self.n_steps, adjoint=self.backprop == "adjoint")
            if basis.family == "piecewise_constant":
                return times, [basis.coefficients(t)[0][0] for t in times]
            dense = [[0.0] * basis.n_basis for _ in times]
            for s, t in enumerate(times):
                for k, w in basis.coefficients(t):
                    dense[s][k] += w
            return times, torch.tensor(dense, dtype=torch.float64, device=device)

        if torch.compiler.is_compiling():
            return build()
        cache = self.__dict__.setdefault("_lookup_cache", {})
        scheme = self.scheme if isinstance(self.scheme, str) else id(self.scheme)
        key = (basis, scheme, self.n_steps, self.backprop == "adjoint", device)
        if key not in cache:
            built = build()
            # a tensor made inside a torch.func transform is the transform's (it cannot be
            # kept: the block would no longer copy or pickle); used once, not cached
            if isinstance(built[1], torch.Tensor) and is_functorch_wrapped_tensor(built[1]):
                return built
            cache.clear()
            cache[key] = built
        return cache[key]

    def extra_repr(self) -> str:
        steps = f"rtol={self.rtol}, atol={self.atol}" if self.rtol else f"n_steps={self.n_steps}"
        sd = self.stochastic_depth
        drop = f", stochastic_depth={sd.p} ({sd.mode}, {sd.schedule})" if sd.active else ""
        return f"scheme={schemes.name_of(self.scheme)}, {steps}, backprop={self.backprop}{drop}"


def _stacks(groups) -> list:
    """The node stacks of a unit's ``basis_tensors()`` (a dict of lists, or a list)."""
    return [t for ts in groups.values() for t in ts] if isinstance(groups, dict) else list(groups)


def blocks_of(module: nn.Module) -> list[ContinuousBlock]:
    """Every ``ContinuousBlock`` in ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, ContinuousBlock)]
