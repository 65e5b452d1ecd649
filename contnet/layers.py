"""Time-dependent layers and the residual unit ``R(t, x)``.

Every layer here is called as ``layer(t, x)`` with a Python float ``t in [0, 1]``. Their
parameters are basis expansions in depth: a tensor with a leading dimension of ``K`` nodes,
``theta(t) = sum_k phi_k(t) theta_k`` (see :mod:`contnet.basis`). A ``piecewise_constant``
lookup is a view of one node (no copy).

- :class:`TimeConv2d`: a 2-d convolution whose weight and bias depend on ``t``.
- :class:`TimeBatchNorm2d`: batch normalisation piecewise constant in depth (statistics
  and affine parameters per cell), as in ContinuousNet.
- :class:`ConvUnit`: the residual unit ``conv-act-conv`` (optional norm, pre-activation
  variant), the rate function of a :class:`contnet.ContinuousBlock`.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import basis as basis_lib

__all__ = [
    "TimeDependent",
    "TimeConv2d",
    "TimeBatchNorm2d",
    "TimeScalar",
    "ConvUnit",
    "ACTIVATIONS",
    "frozen_batch_stats",
]

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "identity": lambda x: x,
}
NORMS = (None, "batch")

_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _dispatch_free(*modules: nn.Module) -> bool:
    """Whether calling these modules' ``forward`` directly skips nothing that calling the
    modules does: no hooks on them, no global module hooks, no JIT tracing (which records
    module scopes). Where torch keeps its hooks elsewhere, the answer is no."""
    from torch.nn.modules import module as nn_module

    if torch.jit.is_tracing():
        return False
    for name in _GLOBAL_HOOKS:
        hooks = getattr(nn_module, name, None)
        if hooks is None or hooks:
            return False
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return not any(getattr(m, kind, True) for m in modules for kind in kinds)


def reads_weights_ahead(unit: nn.Module) -> bool:
    """Whether a forward pass may read ``unit``'s weights at every stage time before it
    runs (the table of :class:`contnet.ContinuousBlock`) with the result of calling it at
    every stage: no forward pre-hook on it or its submodules, nor a global one (such a hook,
    as ``torch.nn.utils.weight_norm``'s, may recompute a weight at each call), no
    parametrized tensor, and for a :class:`ConvUnit` its own ``forward`` (which takes the
    stage's weights)."""
    if isinstance(unit, ConvUnit) and not unit._own_forward:
        return False
    if getattr(nn.modules.module, "_global_forward_pre_hooks", True):
        return False
    # a parametrized module holds its parametrizations in a ModuleDict of that name (what
    # torch.nn.utils.parametrize.is_parametrized checks, read here without its slow getattr)
    return not any(
        getattr(m, "_forward_pre_hooks", True)
        or isinstance(m._modules.get("parametrizations"), nn.ModuleDict)
        for m in unit.modules()
    )


def _conv_args(conv) -> tuple:
    """``(stride, padding, dilation, groups)`` of a convolution for ``F.conv2d``, each pair
    with equal entries passed as one int (parsed faster than a tuple: ~1 us a call)."""

    def arg(v):
        return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v

    return arg(conv.stride), arg(conv.padding), arg(conv.dilation), conv.groups


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def _real(v, name: str) -> float:
    """A finite real number (a Python or NumPy number or a one-element tensor, not a bool)
    as a float."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point():
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return float(v)


def _positive_float(v, name: str) -> float:
    v = _real(v, name)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def check_state(x, channels: int, what: str = "channels") -> None:
    """``x`` must be a floating-point ``(N, channels, H, W)`` tensor (``what`` names the
    setting ``channels`` comes from, for the message)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor, got {got}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"x must have shape (N, {channels}, H, W) for {what}={channels}, got {tuple(x.shape)}"
        )


def _check_time(t) -> float:
    if isinstance(t, torch.Tensor) or isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a Python float, got {type(t).__name__}")
    if not math.isfinite(t):
        raise ValueError(f"t must be finite, got {t}")
    return float(t)


def interpolate(theta: torch.Tensor, coefficients) -> torch.Tensor:
    """``sum_k phi_k theta[k]`` from ``(k, phi_k)`` pairs; a single unit coefficient is a
    view of the node (no copy)."""
    (k0, w0), *rest = coefficients
    if not rest and w0 == 1.0:
        return theta[k0]
    out = theta[k0] * w0
    for k, w in rest:
        if w != 0.0:
            out = out + theta[k] * w
    return out


def node_layout_like(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new``, a stack of filter banks along dim 0 like ``old``, with ``old``'s node layout:
    channels_last filter banks where ``old``'s are (see :meth:`TimeConv2d._apply`), so a
    convolution of channels_last input takes them without converting them at every call."""
    if old.dim() == 5 and new.dim() == 5:
        flat = old.flatten(0, 1)
        if not flat.is_contiguous() and flat.is_contiguous(memory_format=torch.channels_last):
            cl = torch.channels_last
            return new.flatten(0, 1).contiguous(memory_format=cl).unflatten(0, new.shape[:2])
    return new


class TimeDependent(nn.Module):
    """Base of modules whose parameters and buffers named in ``_basis_tensors`` carry a
    leading dimension of basis nodes. Gives them exact :meth:`refine` and L2
    :meth:`project`.

    Both replace each such parameter by a new ``nn.Parameter`` of the new size (changing
    the shape of a parameter in place would leave autograd's cached gradient accumulator
    at the old shape) and return ``[(old, new, M)]`` with ``new = M @ old`` along dim 0,
    so callers can move optimiser state to the new parameters, mapped the same way (see
    :func:`contnet.refine`)."""

    _basis_tensors: tuple[str, ...] = ()

    def __init__(self, basis: basis_lib.Basis):
        super().__init__()
        self.basis = basis

    @property
    def n_basis(self) -> int:
        return self.basis.n_basis

    def coefficients(self, t: float):
        """Non-zero ``(k, phi_k(t))`` of this layer's basis at time ``t``."""
        return self.basis.coefficients(t)

    def _format_like(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The layout a replacement tensor takes (subclasses keep memory formats)."""
        return new

    def _tensors(self):
        for name in self._basis_tensors:
            v = getattr(self, name)
            if v is not None:
                yield name, v

    def _apply_basis_map(self, new_basis: basis_lib.Basis, M: torch.Tensor) -> list:
        """Replace every basis tensor ``theta`` by ``M @ theta`` (along dim 0)."""
        changes = []
        with torch.no_grad():
            for name, old in list(self._tensors()):
                value = self._format_like(old, basis_lib.apply_matrix(M, old.detach()))
                if isinstance(old, nn.Parameter):
                    new = nn.Parameter(value, requires_grad=old.requires_grad)
                    setattr(self, name, new)
                else:
                    new = value
                    self._buffers[name] = new
                changes.append((old, new, M))
        self.basis = new_basis
        return changes

    def refine(self) -> list:
        """Move to the next finer basis of the family without changing ``theta(t)``.
        Returns ``[(old, new, R)]`` for every tensor replaced (``new = R @ old``)."""
        return self._apply_basis_map(self.basis.refined(), self.basis.refine_matrix())

    def project(self, n_basis: int, basis: str | None = None) -> list:
        """L2-project onto ``n_basis`` nodes of ``basis`` (default: the current family).
        Returns ``[(old, new, P)]`` for every tensor replaced."""
        target = basis_lib.get(basis or self.basis.family, n_basis)
        return self._apply_basis_map(target, self.basis.projection_matrix(target))

    def extra_repr(self) -> str:
        return f"basis={self.basis.family}, n_basis={self.n_basis}"


class TimeConv2d(TimeDependent):
    """2-d convolution with weight ``W(t)`` and bias ``b(t)`` expanded in a basis in depth.

    ``weight``: ``(K, out_channels, in_channels // groups, kh, kw)``; ``bias``:
    ``(K, out_channels)``. Called as ``conv(t, x)`` with ``x`` of shape ``(N, C_in, H, W)``.
    ``padding`` defaults to ``kernel_size // 2`` ("same" for odd kernels at stride 1).
    Every node is initialised independently as ``nn.Conv2d`` initialises its weight.
    """

    _basis_tensors = ("weight", "bias")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        stride=1,
        padding=None,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        ks = nn.modules.utils._pair(kernel_size)
        for v in ks:
            _positive_int(v, "kernel_size")
        self.kernel_size = ks
        self.stride = nn.modules.utils._pair(stride)
        for v in self.stride:
            _positive_int(v, "stride")
        self.dilation = nn.modules.utils._pair(dilation)
        for v in self.dilation:
            _positive_int(v, "dilation")
        self.padding = self._padding(padding)
        K = self.basis.n_basis
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(K, out_channels, in_channels // groups, *ks, **factory)
        )
        self.bias = nn.Parameter(torch.empty(K, out_channels, **factory)) if bias else None
        self.reset_parameters()

    def _padding(self, padding) -> tuple:
        """``padding`` as a pair of ints; ``"valid"`` is 0, ``"same"`` (and None) the half
        of each dilated kernel, which keeps the size at stride 1 for odd kernels."""
        if padding == "valid":
            return (0, 0)
        if padding is None or padding == "same":
            spans = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
            if padding == "same" and (self.stride != (1, 1) or any(v % 2 for v in spans)):
                raise ValueError(
                    "padding='same' needs stride 1 and an odd kernel_size (after dilation), "
                    f"got stride={self.stride}, kernel_size={self.kernel_size}, dilation={self.dilation}"
                )
            return tuple(v // 2 for v in spans)
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        pad = nn.modules.utils._pair(padding)
        if len(pad) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in pad
        ):
            raise ValueError(f"padding must be one or two non-negative ints, got {padding!r}")
        return tuple(pad)

    def reset_parameters(self) -> None:
        fan_in = self.weight[0, 0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            values = torch.empty_like(self.weight)
            for k in range(self.n_basis):
                nn.init.kaiming_uniform_(values[k], a=math.sqrt(5))
            self.weight.copy_(self.basis.from_values(values))
            if self.bias is not None:
                self.bias.copy_(
                    self.basis.from_values(torch.empty_like(self.bias).uniform_(-bound, bound))
                )

    def _apply(self, fn, recurse=True):
        # nn.Module.to(memory_format=torch.channels_last) gives every 4-d and 5-d tensor the
        # 2-d channels_last layout, which a 5-d stack of K filter banks cannot take. The
        # stack goes through its 4-d view (K * out, in, kh, kw), so each node becomes a
        # channels_last filter bank; parameter identities are kept.
        def per_filter(t):
            if t.dim() == 5:
                return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2])
            return fn(t)

        return super()._apply(per_filter, recurse)

    def _format_like(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """A refined or projected weight keeps the node layout of the one it replaces."""
        return node_layout_like(old, new)

    def weight_at(self, t: float):
        """``(W(t), b(t))``; ``b`` is None without bias. A ``piecewise_constant`` basis
        gives views of a node."""
        c = self.coefficients(_check_time(t))
        b = interpolate(self.bias, c) if self.bias is not None else None
        return interpolate(self.weight, c), b

    def basis_tensors(self) -> list[torch.Tensor]:
        """The tensors expanded in the basis, in the order of :meth:`weight_at`'s result."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def forward(
        self, t: float, x: torch.Tensor, weights=None, *, use_bias: bool = True
    ) -> torch.Tensor:
        """``conv(x; W(t), b(t))``. ``weights``: the values at ``t`` of
        :meth:`basis_tensors` (``(W,)`` or ``(W, b)``), as a block precomputes them for all
        stage times; else they are looked up here.
        ``use_bias=False`` leaves the bias out (for a caller that fuses it)."""
        check_state(x, self.in_channels, "in_channels")
        return self.apply_weights(x, self.weight_at(t) if weights is None else weights, use_bias)

    def apply_weights(self, x: torch.Tensor, weights, use_bias: bool = True) -> torch.Tensor:
        """``conv(x; W, b)`` with ``weights`` ``(W,)`` or ``(W, b)`` (``b`` may be None)
        already taken at the stage time: no checks (see :meth:`forward`)."""
        b = weights[1] if use_bias and len(weights) > 1 else None
        return F.conv2d(x, weights[0], b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            + super().extra_repr()
        )


class TimeBatchNorm2d(TimeDependent):
    """Batch normalisation, piecewise constant in depth: ``n_cells`` sets of running
    statistics and affine parameters; ``bn(t, x)`` uses the cell of ``t``.

    ``weight``, ``bias``, ``running_mean``, ``running_var``: ``(n_cells, channels)``.
    Refinement splits cells (exact). Projection averages cells (the L2 projection of the
    affine parameters and the statistics).
    """

    _basis_tensors = ("weight", "bias", "running_mean", "running_var")

    def __init__(
        self,
        channels: int,
        n_cells: int = 1,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get("piecewise_constant", _positive_int(n_cells, "n_cells")))
        self.channels = _positive_int(channels, "channels")
        self.eps = _positive_float(eps, "eps")
        if momentum is None:
            raise ValueError(
                "momentum must be a number in [0, 1]; None (nn.BatchNorm2d's cumulative "
                "average) is not supported"
            )
        self.momentum = _real(momentum, "momentum")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum}")
        factory = {"device": device, "dtype": dtype}
        shape = (n_cells, channels)
        self.weight = nn.Parameter(torch.ones(shape, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(shape, **factory)) if affine else None
        self.register_buffer("running_mean", torch.zeros(shape, **factory))
        self.register_buffer("running_var", torch.ones(shape, **factory))

    def project(self, n_basis: int, basis: str | None = None) -> list:
        """Statistics stay piecewise constant: projects onto ``n_basis`` cells whatever
        ``basis`` is asked for."""
        return super().project(n_basis, "piecewise_constant")

    def forward(self, t: float, x: torch.Tensor) -> torch.Tensor:
        check_state(x, self.channels, "channels")
        ((k, _),) = self.coefficients(_check_time(t))
        w = self.weight[k] if self.weight is not None else None
        b = self.bias[k] if self.bias is not None else None
        return F.batch_norm(
            x,
            self.running_mean[k],
            self.running_var[k],
            w,
            b,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.channels}, n_cells={self.n_basis}, eps={self.eps}, momentum={self.momentum}"


class TimeScalar(TimeDependent):
    """A learnable scalar function of depth, ``k(t) = sum_k phi_k(t) theta_k`` (LM-ResNet's
    coefficient). Node values start uniform in ``init`` (LM-ResNet draws ``k_n`` from
    ``U(-0.1, 0)``, Lu et al. 2018)."""

    _basis_tensors = ("theta",)

    def __init__(
        self,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        *,
        init=(-0.1, 0.0),
        device=None,
        dtype=None,
    ):
        super().__init__(basis_lib.get(basis, n_basis))
        lo, hi = init
        values = torch.empty(self.n_basis, device=device, dtype=dtype).uniform_(lo, hi)
        self.theta = nn.Parameter(self.basis.from_values(values))

    def at(self, times) -> torch.Tensor:
        """``k(t)`` at every time of ``times``, a tensor of ``len(times)`` values."""
        return torch.stack([interpolate(self.theta, self.coefficients(t)) for t in times])

    def forward(self, t: float) -> torch.Tensor:
        return interpolate(self.theta, self.coefficients(_check_time(t)))


@contextlib.contextmanager
def frozen_batch_stats(module: nn.Module):
    """Within the block, batch norms in ``module`` (contnet's and torch's) normalise as
    usual but leave their running statistics alone: for steps recomputed during backward,
    whose statistics the forward pass already counted."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, (TimeBatchNorm2d, nn.modules.batchnorm._BatchNorm))
    ]
    saved = [(m, m.momentum, getattr(m, "num_batches_tracked", None)) for m in norms]
    counts = [None if n is None else n.clone() for _, _, n in saved]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for (m, momentum, n), c in zip(saved, counts):
            m.momentum = momentum
            if n is not None:
                n.copy_(c)


class ConvUnit(nn.Module):
    """The residual unit ``R(t, x)``: two 3x3 time-dependent convolutions.

    - ``preact=False``: ``R = scale * act(norm2(conv2(act(norm1(conv1(x))))))``
    - ``preact=True``:  ``R = scale * conv2(act(norm2(conv1(act(norm1(x))))))``
      (the pre-activation residual branch; see :func:`contnet.from_resnet`)

    ``channels`` in and out, ``hidden`` (default ``channels``) between the convolutions.
    ``norm``: ``None`` or ``"batch"`` (piecewise-constant :class:`TimeBatchNorm2d` with one
    cell per cell of the weight basis); convolutions carry a bias only without norm.
    ``scale`` is a fixed factor on the rate.
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden: int | None = None,
        n_basis: int = 1,
        basis: str = "piecewise_constant",
        act: str = "relu",
        norm: str | None = None,
        preact: bool = False,
        kernel_size: int = 3,
        scale: float = 1.0,
        bias: bool | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        channels = _positive_int(channels, "channels")
        hidden = channels if hidden is None else _positive_int(hidden, "hidden")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown act {act!r}; expected one of {list(ACTIVATIONS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
        basis_lib.check_family(basis)
        for v in nn.modules.utils._pair(kernel_size):
            if _positive_int(v, "kernel_size") % 2 == 0:
                raise ValueError(
                    f"kernel_size must be odd (the unit keeps the state's size), got {kernel_size}"
                )
        self.channels, self.hidden = channels, hidden
        self.act_name, self.norm_name, self.preact = act, norm, bool(preact)
        self.scale = _real(scale, "scale")
        self.act = ACTIVATIONS[act]
        factory = {"device": device, "dtype": dtype}
        bias = norm is None if bias is None else bool(bias)
        conv = {"n_basis": n_basis, "basis": basis, "bias": bias, **factory}
        self.conv1 = TimeConv2d(channels, hidden, kernel_size, **conv)
        self.conv2 = TimeConv2d(hidden, channels, kernel_size, **conv)
        if norm == "batch":
            cells = self.conv1.basis.n_cells
            self.norm1 = TimeBatchNorm2d(channels if preact else hidden, cells, **factory)
            self.norm2 = TimeBatchNorm2d(hidden if preact else channels, cells, **factory)
        else:
            self.norm1 = self.norm2 = None

    @property
    def basis(self) -> basis_lib.Basis:
        return self.conv1.basis

    @property
    def n_basis(self) -> int:
        return self.conv1.n_basis

    def _norm(self, norm, t, x):
        return x if norm is None else norm(t, x)

    def _check(self, x):
        check_state(x, self.channels, "channels")

    def basis_tensors(self) -> dict[str, list[torch.Tensor]]:
        """``{"conv1": [...], "conv2": [...]}``: the tensors expanded in the unit's weight
        basis, which a block interpolates for all stage times at once."""
        return {"conv1": self.conv1.basis_tensors(), "conv2": self.conv2.basis_tensors()}

    def _body(self, t, x, weights, direct=False):
        """Everything up to conv2's output, without conv2's bias. ``direct``: the
        convolutions are applied to the given weights without module dispatch (see
        :meth:`stage_split`)."""
        w1 = weights["conv1"] if weights else None
        w2 = weights["conv2"] if weights else None

        def conv(m, x, w, use_bias=True):
            return m.apply_weights(x, w, use_bias) if direct else m(t, x, w, use_bias=use_bias)

        if self.preact:
            y = conv(self.conv1, self.act(self._norm(self.norm1, t, x)), w1)
            return conv(self.conv2, self.act(self._norm(self.norm2, t, y)), w2, use_bias=False)
        y = self.act(self._norm(self.norm1, t, conv(self.conv1, x, w1)))
        return conv(self.conv2, y, w2, use_bias=False)

    def _bias2(self, t, weights):
        if self.conv2.bias is None:
            return None
        return weights["conv2"][1] if weights else self.conv2.weight_at(t)[1]

    @property
    def fusable(self) -> bool:
        """Whether an integrator may fuse the tail after conv2 with the stage update,
        calling :meth:`split` instead of the unit: the tail is ``scale * act(y + bias)`` (no
        batch norm in it) and calling the unit runs nothing else (no hooks on it, no global
        module hooks, no subclass's own ``forward``)."""
        return self._tail_fusable and self._own_forward and _dispatch_free(self)

    @property
    def _tail_fusable(self) -> bool:
        return self.preact or self.norm2 is None

    @property
    def _own_forward(self) -> bool:  # no subclass's forward to honour
        return type(self).forward is ConvUnit.forward

    def split(self, t: float, x: torch.Tensor, weights=None):
        """``(y, bias, act, scale)`` with ``R(t, x) = scale * act(y + bias)``, ``y`` being
        conv2's output before its bias; for a unit whose tail is that (preact=True or
        norm=None)."""
        if not self._tail_fusable:
            raise ValueError("split needs a fusable unit (preact=True or norm=None)")
        return self._split(t, x, weights)

    def _split(self, t, x, weights, direct=False):
        self._check(x)
        act = "identity" if self.preact else self.act_name
        return self._body(t, x, weights, direct), self._bias2(t, weights), act, self.scale

    def stage_split(self, table: dict, x: torch.Tensor):
        """:meth:`split` as a function ``(t, x)`` for one forward pass of an integrator,
        reading stage ``t``'s weights from ``table`` (``{t: {"conv1": (W, b), "conv2":
        (W, b)}}``, see :class:`contnet.block.StageRate`). ``x``: the pass's input, checked
        here once; every stage's input has its shape. When calling the convolutions'
        ``forward`` skips nothing (no hooks on them, no global module hooks, no JIT
        tracing, no subclass's own ``forward``) it applies them to the weights directly,
        without the module dispatch and argument checks of every call, and for
        ``preact=False`` with every attribute and every stage's weights looked up once:
        the host time of a stage is what bounds small batches on a GPU."""
        if not self._tail_fusable:
            raise ValueError("stage_split needs a fusable unit (preact=True or norm=None)")
        self._check(x)
        convs = (self.conv1, self.conv2)
        own = all(type(m).forward is TimeConv2d.forward for m in convs)  # no override
        if not (own and _dispatch_free(*convs)):
            return lambda t, x: self._split(t, x, table[t])
        if self.preact or self.norm1 is not None:  # norms stay module calls
            return lambda t, x: self._split(t, x, table[t], direct=True)
        # R = scale * act(conv2(act(conv1(x))) + b2): every name bound once, and every
        # stage's (W1, b1, W2, b2) in one tuple
        conv2d, act, act_name, scale = F.conv2d, self.act, self.act_name, self.scale
        c1, c2 = convs
        args1, args2 = _conv_args(c1), _conv_args(c2)

        def row(w1, w2):
            return w1[0], w1[1] if len(w1) > 1 else None, w2[0], w2[1] if len(w2) > 1 else None

        rows = {t: row(w["conv1"], w["conv2"]) for t, w in table.items()}

        def split(t, x):
            w1, b1, w2, b2 = rows[t]
            return conv2d(act(conv2d(x, w1, b1, *args1)), w2, None, *args2), b2, act_name, scale

        return split

    def forward(self, t: float, x: torch.Tensor, weights=None) -> torch.Tensor:
        """``R(t, x)``. ``weights``: ``{"conv1": (W1, b1), "conv2": (W2, b2)}`` already
        interpolated at ``t``, else looked up here."""
        self._check(x)
        y = self._body(t, x, weights)
        b2 = self._bias2(t, weights)
        if b2 is not None:
            y = y + b2.view(1, -1, 1, 1)
        if not self.preact:
            y = self.act(self._norm(self.norm2, t, y))
        return y if self.scale == 1.0 else y * self.scale

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, hidden={self.hidden}, act={self.act_name}, "
            f"norm={self.norm_name}, preact={self.preact}, scale={self.scale}"
        )
