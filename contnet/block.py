"""``ContinuousBlock``: a residual stage as the flow of ``dx/dt = R(t, x)`` on ``[0, 1]``."""

from __future__ import annotations

import torch
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor
from torch.utils._pytree import tree_leaves

from . import ops, schemes
from .integrate import BACKPROP_MODES, odeint, rate_times
from .nn import (
    PassSplitUnit,
    SplitUnit,
    TimeScalar,
    Unit,
    conforms,
    filters_like,
    frozen_batch_stats,
    node_layout_like,
    reads_weights_ahead,
    recompute_hazards,
)

__all__ = ["ContinuousBlock", "blocks_of"]


class ContinuousBlock(nn.Module):
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

    Example::

        unit = contnet.ConvUnit(16, n_basis=4, norm="batch")
        block = contnet.ContinuousBlock(unit, scheme="rk4")   # 4 steps of rk4
        y = block(x)
        block.scheme, block.n_steps = "euler", 16             # another manifestation
    """

    def __init__(self, unit: Unit, *, scheme="rk4", n_steps: int | None = None, backprop="direct"):
        super().__init__()
        if not callable(unit):
            raise TypeError(f"unit must be callable as unit(t, x), got {type(unit).__name__}")
        self.unit = unit
        self.lm = None
        is_unit = conforms(unit, Unit)
        if isinstance(schemes.get(scheme), schemes.LMResNet):
            basis = unit.basis if is_unit else None
            self.lm = TimeScalar(basis.n_basis, basis.family) if basis is not None else TimeScalar()
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

    @property
    def scheme(self):
        return self._scheme

    @scheme.setter
    def scheme(self, value):
        sch = schemes.get(value)
        if isinstance(sch, schemes.LMResNet) and getattr(self, "lm", None) is None:
            raise ValueError(
                "scheme 'lm' has a learnable k(t): build the block with scheme='lm' so that it owns one"
            )
        self._scheme = value if isinstance(value, str) else sch

    @property
    def n_steps(self) -> int:
        return self._n_steps

    @n_steps.setter
    def n_steps(self, value: int):
        self._n_steps = schemes.check_n_steps(value)

    @property
    def backprop(self) -> str:
        return self._backprop

    @backprop.setter
    def backprop(self, value: str):
        if value not in BACKPROP_MODES:
            raise ValueError(f"unknown backprop {value!r}; expected one of {list(BACKPROP_MODES)}")
        self._backprop = value

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
        rate = self._rate(x, kwargs, layout)
        kw = {}
        if isinstance(schemes.get(self.scheme), schemes.LMResNet):
            kw["lm_k"] = self.lm.at(rate_times(self.scheme, self.n_steps))
        if self.backprop != "direct" and torch.is_grad_enabled():
            _check_replayable(self.unit, self.backprop)
        if self.backprop != "direct":
            # what the rate reads: the stage-weight table, and the unit's parameters that
            # are not behind it (a tensor and one computed from it must not both be listed)
            tables, behind = [], set()
            if isinstance(rate, StageRate):
                tables = rate.tensors()
                behind = {id(t) for t in _stacks(self.unit.basis_tensors())}
            params = tables + [p for p in self.unit.parameters() if id(p) not in behind]
            if torch.is_grad_enabled():
                params += _keyword_tensors(kwargs, params)
            kw["params"] = params
            kw["recompute"] = lambda: frozen_batch_stats(self.unit)
        return odeint(
            rate, x, scheme=self.scheme, n_steps=self.n_steps, backprop=self.backprop, **kw
        )

    def _rate(self, x, kwargs=None, layout=None):
        """The rate for one forward pass: the unit reading its weights at every stage time
        from a table built up front. ``piecewise_constant`` weights are views of the nodes
        (``unbind``, no copy); other bases are interpolated for all stage times and all
        tensors in one launch (:func:`contnet.ops.basis_interp`), except with
        ``checkpoint``/``adjoint`` backprop, where each step interpolates its own. No table
        where reading the weights ahead could differ from calling the unit at every stage
        (:func:`contnet.nn.reads_weights_ahead`: a forward pre-hook, a parametrization,
        a subclass's own forward)."""
        unit = self.unit
        plain = unit if not kwargs else lambda t, x: unit(t, x, **kwargs)
        if not conforms(unit, Unit) or not reads_weights_ahead(unit):
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
        return f"scheme={schemes.name_of(self.scheme)}, n_steps={self.n_steps}, backprop={self.backprop}"


class StageRate:
    """A unit as the rate of one forward pass from ``x``, reading its weights from a table
    of every stage time (``{t: {"conv1": (W, b), ...}}``, or ``{t: (W, b)}`` for a layer),
    and passing ``kwargs`` to every call. Keeps the unit's fusable tail."""

    def __init__(self, unit: Unit, table, x, kwargs=None):
        self.unit, self.table, self.kwargs = unit, table, kwargs or {}
        self.fusable = conforms(unit, SplitUnit) and unit.fusable
        # split(t, x) -> (y, bias, act, scale), the unit's tail apart (see integrate.rk)
        self.split = None
        kw = self.kwargs
        if self.fusable and conforms(unit, PassSplitUnit):
            self.split = unit.stage_split(table, x, **kw)
        elif self.fusable:
            self.split = lambda t, x: unit.split(t, x, weights=table[t], **kw)

    def __call__(self, t, x):
        if self.kwargs:
            return self.unit(t, x, weights=self.table[t], **self.kwargs)
        return self.unit(t, x, weights=self.table[t])

    def tensors(self) -> list:
        """Every distinct tensor of the table (the weights the rate reads)."""
        seen = {}
        for entry in self.table.values():
            for ws in entry.values() if isinstance(entry, dict) else (entry,):
                for w in ws:
                    if w is not None:
                        seen[id(w)] = w
        return list(seen.values())


def _check_replayable(unit, backprop: str) -> None:
    """Refuse a unit whose state a step recomputed in backward would change again
    (:func:`contnet.nn.recompute_hazards`): its gradients would not be the forward's."""
    found = recompute_hazards(unit)
    if found:
        raise ValueError(
            f"backprop={backprop!r} recomputes each step in backward, but {', '.join(found)} "
            "updates its state at every call in training mode, so the recomputed steps "
            "would use other weights than the forward pass did: use backprop='direct', or "
            "put those modules in eval mode"
        )


def _keyword_tensors(kwargs, params) -> list:
    """The tensors among the keyword arguments (at any depth of lists, tuples and dicts)
    that need a gradient, for ``checkpoint``/``adjoint`` to differentiate (a conditioning
    input, a cross-attention memory). One computed from a tensor of ``params`` (the unit's
    own weights) is refused: its gradient would reach that tensor twice, once through the
    step and once through its own history."""
    for name, value in kwargs.items():
        for leaf in tree_leaves(value):
            if not isinstance(leaf, torch.Tensor) and _hides_grad(leaf):
                raise ValueError(
                    f"keyword argument {name!r} holds tensors that need a gradient inside a "
                    f"{type(leaf).__name__}, which backprop='checkpoint'/'adjoint' cannot see "
                    "to differentiate: pass them as tensors (alone, or in tuples, lists or "
                    "dicts), or use backprop='direct'"
                )
    leaves = [t for t in tree_leaves(kwargs) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not leaves:
        return []
    listed = {id(p) for p in params}
    out = {id(t): t for t in leaves if id(t) not in listed}
    differentiated = [*params, *out.values()]
    for name, t in _named_leaves(kwargs):
        if id(t) in out and _reaches(t, [p for p in differentiated if p is not t]):
            raise ValueError(
                f"keyword argument {name!r} is computed from another tensor that "
                "backprop='checkpoint'/'adjoint' differentiate (a parameter of the unit, or "
                "another keyword argument), so its gradient would count twice: pass the "
                "tensors it is computed from, or it detached, or use backprop='direct'"
            )
    return list(out.values())


def _hides_grad(obj, depth: int = 3, seen=None) -> bool:
    """Whether an object that is not a tensor (a dataclass, a module, any object with
    attributes) holds, within ``depth`` levels of its attributes and containers, a tensor
    that needs a gradient."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad
    if depth == 0 or id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)):
        return False
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = list(obj)
    else:
        items = list(getattr(obj, "__dict__", {}).values())
        items += [getattr(obj, n) for n in getattr(type(obj), "__slots__", ()) if hasattr(obj, n)]
    return any(_hides_grad(v, depth - 1, seen) for v in items)


def _named_leaves(kwargs):
    for name, value in kwargs.items():
        for t in tree_leaves(value):
            if isinstance(t, torch.Tensor):
                yield name, t


def _reaches(t: torch.Tensor, others: list) -> bool:
    """Whether ``t``'s autograd history reads one of ``others`` (a leaf by its gradient
    accumulator; a computed tensor by its place among its node's outputs)."""
    leaves = {id(p) for p in others if p.grad_fn is None}
    places = {(p.grad_fn, p.output_nr) for p in others if p.grad_fn is not None}
    seen, stack = set(), list(t.grad_fn.next_functions) if t.grad_fn is not None else []
    while stack:
        node, nr = stack.pop()
        if node is None or (node, nr) in seen:
            continue
        seen.add((node, nr))
        var = getattr(node, "variable", None)  # an AccumulateGrad: a leaf tensor
        if (var is not None and id(var) in leaves) or (node, nr) in places:
            return True
        stack.extend(node.next_functions)
    return False


def _stacks(groups) -> list:
    """The node stacks of a unit's ``basis_tensors()`` (a dict of lists, or a list)."""
    return [t for ts in groups.values() for t in ts] if isinstance(groups, dict) else list(groups)


def blocks_of(module: nn.Module) -> list[ContinuousBlock]:
    """Every ``ContinuousBlock`` in ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, ContinuousBlock)]
