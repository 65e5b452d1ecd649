"""Residual units: the rate ``R(t, x)`` a block integrates (see :class:`contnet.nn.Unit`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import basis as basis_lib
from ..ops.activations import MODULE_FUNCS
from .checks import check_state, positive_int, real
from .conv import TimeConv2d, conv_args
from .dispatch import dispatch_free
from .norm import TimeBatchNorm2d
from .time_dependent import TimeDependent

#: the activations a unit may apply, by name (the table of contnet/ops/activations.def)
ACTIVATIONS = MODULE_FUNCS


NORMS = (None, "batch")


def own_forward(module: nn.Module) -> bool:
    """Whether ``module.forward`` is that of contnet's class it derives from (no subclass's
    own forward to honour, which might not take the stage's ``weights``)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith(__package__):
            return type(module).forward is cls.forward
    return False


def reads_weights_ahead(unit: nn.Module) -> bool:
    """Whether a forward pass may read ``unit``'s weights at every stage time before it
    runs (the table of :class:`contnet.ContinuousBlock`) with the result of calling it at
    every stage: no forward pre-hook on it or its submodules, nor a global one (such a hook,
    as ``torch.nn.utils.weight_norm``'s, may recompute a weight at each call), no
    parametrized tensor, and for contnet's units and layers their own ``forward`` (which
    takes the stage's weights)."""
    if isinstance(unit, (TimeUnit, TimeDependent)) and not own_forward(unit):
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


def check_choice(value, choices, name: str):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return value


class TimeUnit(nn.Module):
    """Base of contnet's residual units: the layers named in ``_weight_layers`` share one
    weight basis, which is the unit's; :meth:`basis_tensors` groups their stacks by layer
    name, and :meth:`layer` calls one of them with its group of ``weights``."""

    _weight_layers: tuple[str, ...] = ()

    @property
    def basis(self) -> basis_lib.Basis:
        return getattr(self, self._weight_layers[0]).basis

    @property
    def n_basis(self) -> int:
        return self.basis.n_basis

    def basis_tensors(self) -> dict[str, list[torch.Tensor]]:
        """``{layer name: [node stacks]}``: the tensors expanded in the unit's weight basis,
        which a block interpolates for all stage times at once."""
        groups = {}
        for name in self._weight_layers:
            layer = getattr(self, name)
            if layer is not None:
                groups[name] = layer.basis_tensors()
        return groups

    def layer(self, name: str, t: float, x, weights, **kw):
        """Layer ``name`` at ``t`` on ``x``, with its values from ``weights`` if given."""
        return getattr(self, name)(t, x, None if weights is None else weights[name], **kw)

    @property
    def _own_forward(self) -> bool:
        return own_forward(self)


class ConvUnit(TimeUnit):
    """The residual unit ``R(t, x)``: two 3x3 time-dependent convolutions.

    - ``preact=False``: ``R = scale * act(norm2(conv2(act(norm1(conv1(x))))))``
    - ``preact=True``:  ``R = scale * conv2(act(norm2(conv1(act(norm1(x))))))``
      (the pre-activation residual branch; see :func:`contnet.from_resnet`)

    ``channels`` in and out, ``hidden`` (default ``channels``) between the convolutions.
    ``norm``: ``None`` or ``"batch"`` (piecewise-constant :class:`TimeBatchNorm2d` with one
    cell per cell of the weight basis); convolutions carry a bias only without norm.
    ``scale`` is a fixed factor on the rate.
    """

    _weight_layers = ("conv1", "conv2")
    #: a block runs it in channels_last on the CPU whatever the input's layout
    channels_last_on_cpu = True

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
        channels = positive_int(channels, "channels")
        hidden = channels if hidden is None else positive_int(hidden, "hidden")
        check_choice(act, ACTIVATIONS, "act")
        check_choice(norm, NORMS, "norm")
        basis_lib.check_family(basis)
        for v in nn.modules.utils._pair(kernel_size):
            if positive_int(v, "kernel_size") % 2 == 0:
                raise ValueError(
                    f"kernel_size must be odd (the unit keeps the state's size), got {kernel_size}"
                )
        self.channels, self.hidden = channels, hidden
        self.act_name, self.norm_name, self.preact = act, norm, bool(preact)
        self.scale = real(scale, "scale")
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

    def _norm(self, norm, t, x):
        return x if norm is None else norm(t, x)

    def _check(self, x):
        check_state(x, self.channels, "channels")

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
        return self._tail_fusable and self._own_forward and dispatch_free(self)

    @property
    def _tail_fusable(self) -> bool:
        return self.preact or self.norm2 is None

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
        if not (own and dispatch_free(*convs)):
            return lambda t, x: self._split(t, x, table[t])
        if self.preact or self.norm1 is not None:  # norms stay module calls
            return lambda t, x: self._split(t, x, table[t], direct=True)
        # R = scale * act(conv2(act(conv1(x))) + b2): every name bound once, and every
        # stage's (W1, b1, W2, b2) in one tuple
        conv2d, act, act_name, scale = F.conv2d, self.act, self.act_name, self.scale
        c1, c2 = convs
        args1, args2 = conv_args(c1), conv_args(c2)

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
