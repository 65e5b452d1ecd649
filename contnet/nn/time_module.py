"""``time_dependent(module)``: any ``nn.Module`` made time-dependent, every parameter a
basis expansion in depth initialised from the module's own value, the running statistics
of its norms kept per cell of the basis."""

from __future__ import annotations

import copy
import inspect
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import basis as basis_lib
from .. import ops
from .time_dependent import TimeDependent, node_layout_like

__all__ = ["TimeModule", "time_dependent", "RESIDUAL_COSINE"]

#: the cosine between a module's first output and its input above which the module looks
#: like a whole residual block ``x + f(x)`` (measured at random init on the inputs their
#: models give them: whole timm, torchvision and Hugging Face blocks 0.71-1.00, their
#: branches within 0.2 of 0)
RESIDUAL_COSINE = 0.5

#: the running statistics of a norm (``nn.BatchNormNd``, ``nn.SyncBatchNorm``,
#: ``nn.InstanceNormNd`` with ``track_running_stats=True``), kept per cell
_STATS = ("running_mean", "running_var", "num_batches_tracked")


class TimeModule(TimeDependent):
    """A module called as ``m(t, *args, **kwargs)``: ``module(*args, **kwargs)`` with every
    parameter ``p`` replaced by ``theta_p(t)``.

    Each parameter of ``module`` becomes, in its place (same name, so ``state_dict`` keys
    are the module's own), a stack of ``K`` basis coefficients along a new first
    dimension. The stacks start at the module's values at every node, so at any ``t`` the
    module first computes exactly what it did (exactly for ``piecewise_constant`` and
    ``legendre``; the nodal interpolation of ``fem_linear`` and ``piecewise_linear`` may
    differ by rounding between nodes). Tied parameters stay tied.

    The running statistics of its batch norms (and of instance norms that track them) are
    piecewise constant in depth, as :class:`contnet.nn.TimeBatchNorm`'s are: one set per
    cell of the basis (``basis.n_cells``; a ``legendre`` basis has one), each starting at
    the module's, the set of ``t``'s cell read and updated at ``t``; refinement splits
    cells and projection averages them with the weights. Other buffers stay as they are,
    one for all depths.

    It is a :class:`contnet.nn.Unit`: :meth:`basis_tensors` lists the stacks, and
    ``weights`` (keyword only), their values at ``t`` as a block looks them up for every
    stage time in one launch, stands in for the lookup. Refinement, projection, the
    optimizer's state, checkpoints, every backprop mode and
    ``.to(memory_format=torch.channels_last)`` (each node's filter bank in the layout) work
    on it as on contnet's own layers.
    """

    #: the output's factor (a stage of ``N`` branches integrated over unit depth has rate
    #: ``N f``; see :func:`contnet.from_branches`)
    scale: float = 1.0

    def __init__(self, module: nn.Module, basis: basis_lib.Basis, *, residual_check=True):
        super().__init__(basis)
        _check_module(module)
        self.module = module
        self.training = module.training
        if not isinstance(residual_check, bool):
            raise TypeError(f"residual_check must be True or False, got {residual_check!r}")
        self.residual_check = residual_check
        groups: dict[int, list[str]] = {}  # one entry per distinct parameter: its names
        params = {}
        for name, p in module.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
            params[id(p)] = p
        self._aliases = {names[0]: tuple(names) for names in groups.values()}
        self._names = tuple(self._aliases)
        # the distinct places each parameter sits in (a submodule used under two names is
        # one place): a call swaps each place once, so that restoring leaves the stacks
        self._places = {
            name: tuple({(id(module.get_submodule(a.rpartition(".")[0])), a.rpartition(".")[2]): a
                         for a in aliases}.values())
            for name, aliases in self._aliases.items()
        }  # fmt: skip
        cells = self.cells
        self._stats = tuple(
            f"{path}.{stat}" if path else stat
            for path, m in module.named_modules()
            if _tracks_stats(m)
            for stat in _STATS
            if getattr(m, stat, None) is not None
        )
        with torch.no_grad():
            for name in self._names:
                p = params[id(module.get_parameter(name))]
                stack = nn.Parameter(basis.constant(p.detach()), requires_grad=p.requires_grad)
                self._replace(name, stack)
            for name in self._stats:
                owner, leaf = self._owner(name)
                owner._buffers[leaf] = cells.constant(getattr(owner, leaf))

    @property
    def cells(self) -> basis_lib.Basis:
        """The cells of the basis, as a ``piecewise_constant`` basis: what the running
        statistics of the module's norms are kept on."""
        return basis_lib.get("piecewise_constant", self.basis.n_cells)

    def _owner(self, name: str) -> tuple[nn.Module, str]:
        path, _, leaf = name.rpartition(".")
        return self.module.get_submodule(path), leaf

    def _replace(self, name: str, new: torch.Tensor) -> None:
        for alias in self._aliases[name]:
            owner, leaf = self._owner(alias)
            setattr(owner, leaf, new)

    def _tensors(self):
        for name in self._names:  # as attributes: torch.func may stand tensors in for them
            owner, leaf = self._owner(name)
            yield name, getattr(owner, leaf)

    def _stat_tensors(self):
        for name in self._stats:
            owner, leaf = self._owner(name)
            yield name, getattr(owner, leaf)

    def basis_tensors(self) -> list[torch.Tensor]:
        """The parameter stacks, in the order of ``named_parameters`` (one per tied group)."""
        return [p for _, p in self._tensors()]

    def _apply_basis_map(self, new_basis: basis_lib.Basis, M: torch.Tensor) -> list:
        """The parameter stacks by ``M``; the norms' statistics from the old cells to the
        new ones (split by refinement, averaged by projection; counts rounded)."""
        C = basis_lib.transfer_matrix(
            self.cells, basis_lib.get("piecewise_constant", new_basis.n_cells)
        )
        stats = []
        with torch.no_grad():
            for name, old in self._stat_tensors():
                if old.is_floating_point():
                    new = basis_lib.apply_matrix(C, old)
                else:  # counts (num_batches_tracked)
                    new = basis_lib.apply_matrix(C, old.double()).round().to(old.dtype)
                stats.append((name, old, new))
        changes = super()._apply_basis_map(new_basis, M)
        for name, old, new in stats:
            owner, leaf = self._owner(name)
            owner._buffers[leaf] = new
            changes.append((old, new, C))
        return changes

    def _format_like(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """A refined or projected stack keeps the node layout of the one it replaces."""
        return node_layout_like(old, new)

    def _apply(self, fn, recurse=True):
        # nn.Module.to(memory_format=...) and other conversions see each node of a stack as
        # a tensor of the module's own rank (a 2-d filter bank, not a 5-d stack of them),
        # so channels_last gives every node's bank that layout; identities are kept
        stacks = {id(t) for _, t in (*self._tensors(), *self._stat_tensors())}
        stacks |= {id(p.grad) for _, p in self._tensors() if p.grad is not None}

        def per_node(t):
            if id(t) in stacks and t.dim() >= 2:
                return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2])
            return fn(t)

        return super()._apply(per_node, recurse)

    def forward(self, t: float, *args, weights=None, **kwargs):
        """``module(*args, **kwargs)`` with its parameters at ``t`` (``weights``: their
        values, in :meth:`basis_tensors`' order, if a block looked them up) and its norms'
        statistics of ``t``'s cell."""
        values = {
            place: value
            for name, value in zip(self._names, self._weights(t, weights))
            for place in self._places[name]
        }
        if self._stats:
            ((cell, _),) = self.cells.coefficients(t)
            values.update((name, stack[cell]) for name, stack in self._stat_tensors())
        # every place given its value, each once: torch's tie_weights would also swap a
        # submodule's parameter under each of its names, and restore it wrongly
        out = functional_call(self.module, values, args, kwargs, tie_weights=False, strict=False)
        if self.residual_check:
            self._check_residual(args, out)
        return out if self.scale == 1.0 else out * self.scale

    def _check_residual(self, args, out) -> None:
        """Once, on the first call that can tell: warn if the output is so close in
        direction to the first argument that the module looks like a whole residual block
        ``x + f(x)``, which a block would integrate as a rate, adding ``x`` again."""
        x = args[0] if args else None
        if (
            not isinstance(x, torch.Tensor)
            or not isinstance(out, torch.Tensor)
            or out.shape != x.shape
            or not x.is_floating_point()
            or x.numel() == 0
            or torch.compiler.is_compiling()
            or ops.in_func_transform()
            or torch.jit.is_tracing()
            or "meta" in (x.device.type, out.device.type)
            or (x.is_cuda and torch.cuda.is_current_stream_capturing())
        ):
            return
        self.residual_check = False
        with torch.no_grad():
            cos = F.cosine_similarity(out.flatten().double(), x.flatten().double(), 0).item()
        if cos > RESIDUAL_COSINE:
            warnings.warn(
                f"time_dependent({type(self.module).__name__}): its output is close to its "
                f"input (cosine {cos:.3f} on its first call), as a whole residual block "
                "x + f(x)'s does; a ContinuousBlock integrates the module as the rate f, so a "
                "whole block would add x twice. Make the branch f alone time-dependent, or "
                "wrap a post-norm layer as layer(x) - x (README: 'Your own model: patterns "
                "that are exact'); time_dependent(..., residual_check=False) silences this",
                UserWarning,
                stacklevel=3,
            )

    def extra_repr(self) -> str:
        stats = f", statistics={len(self._stats)}" if self._stats else ""
        scale = f", scale={self.scale:g}" if self.scale != 1.0 else ""
        return f"parameters={len(self._names)}{stats}{scale}, " + super().extra_repr()


def _tracks_stats(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats


def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if isinstance(module, TimeModule):
        raise ValueError(
            "module is already time-dependent (made by time_dependent): refine or project "
            "it to change its basis (contnet.refine, contnet.project)"
        )
    if any(isinstance(m, TimeDependent) for m in module.modules()):
        raise ValueError(
            "module must not contain time-dependent layers already (their parameters are "
            "basis expansions); make its plain layers time-dependent instead"
        )
    for name, m in module.named_modules():
        if isinstance(m._modules.get("parametrizations"), nn.ModuleDict):
            raise ValueError(
                f"module must have no parametrized tensors, found one in {name or 'module'} "
                "(remove the parametrization first: torch.nn.utils.parametrize.remove_parametrizations)"
            )
        lazy = [n for n, p in m.named_parameters(recurse=False) if _uninitialized(p)]
        if lazy:
            raise ValueError(
                f"module must have materialized parameters, found lazy {lazy} in "
                f"{name or 'module'} (run it on one input first)"
            )
    try:
        takes = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        takes = {}
    if "weights" in takes:
        raise ValueError(
            "module's forward must not take an argument named 'weights' (the time-dependent "
            "module's keyword for the values a block looked up)"
        )
    if not any(True for _ in module.parameters()):
        raise ValueError("module must have at least one parameter to make time-dependent")


def _uninitialized(p) -> bool:
    return isinstance(p, nn.parameter.UninitializedTensorMixin)


def _copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module``. Tensors held as plain attributes with a history (the
    weight that ``torch.nn.utils.weight_norm``'s hook computes before each call), which
    ``copy.deepcopy`` refuses, are copied without it."""
    memo = {}
    for m in module.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                memo[id(v)] = v.detach().clone()
    try:
        return copy.deepcopy(module, memo)
    except Exception as e:  # noqa: BLE001  (any failure of the module's own copying)
        raise TypeError(
            f"module ({type(module).__name__}) could not be copied ({type(e).__name__}: {e}); "
            "time_dependent works on a copy, leaving the module as it was"
        ) from e


def time_dependent(
    module: nn.Module,
    *,
    n_basis: int = 1,
    basis: str = "piecewise_constant",
    residual_check: bool = True,
) -> TimeModule:
    """A time-dependent copy of ``module``: a :class:`TimeModule` called as
    ``m(t, *args, **kwargs)``, every parameter a basis expansion with ``n_basis`` nodes of
    ``basis``, initialised from the module's value at every node; its norms' running
    statistics kept per cell; other buffers stay.

    ``module`` itself is left as it was (the result holds a deep copy of it; parameters it
    shares with modules outside it are not shared by the copy), so it can be converted
    again, or kept for comparison. Make the residual *branch* ``f`` of
    ``x <- x + f(x)`` time-dependent, not the whole block: the first call warns if the
    module's output looks like ``x + f(x)`` (``residual_check=False`` turns that off).
    Example, a residual branch of one's own as the rate of a block::

        branch = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
        block = contnet.ContinuousBlock(contnet.time_dependent(branch, n_basis=4))
    """
    basis = basis_lib.get(basis, n_basis)  # arguments first: nothing is copied for an error
    _check_module(module)
    return TimeModule(_copy(module), basis, residual_check=residual_check)
