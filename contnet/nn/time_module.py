"""``time_dependent(module)``: any ``nn.Module`` made time-dependent, every parameter a
basis expansion in depth initialised from the module's own value."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.func import functional_call

from .. import basis as basis_lib
from .time_dependent import TimeDependent

__all__ = ["TimeModule", "time_dependent"]


class TimeModule(TimeDependent):
    """A module called as ``m(t, *args, **kwargs)``: ``module(*args, **kwargs)`` with every
    parameter ``p`` replaced by ``theta_p(t)``.

    Each parameter of ``module`` becomes, in its place (same name, so ``state_dict`` keys
    are the module's own), a stack of ``K`` basis coefficients along a new first
    dimension; buffers stay as they are. The stacks start at the module's values at every
    node, so at any ``t`` the module first computes exactly what it did (exactly for
    ``piecewise_constant`` and ``legendre``; the nodal interpolation of ``fem_linear`` and
    ``piecewise_linear`` may differ by rounding between nodes). Tied parameters stay tied.

    It is a :class:`contnet.nn.Unit`: :meth:`basis_tensors` lists the stacks, and
    ``weights`` (keyword only), their values at ``t`` as a block looks them up for every
    stage time in one launch, stands in for the lookup. Refinement, projection, the
    optimizer's state, checkpoints and every backprop mode work on it as on contnet's own
    layers.
    """

    def __init__(self, module: nn.Module, basis: basis_lib.Basis):
        super().__init__(basis)
        _check_module(module)
        self.module = module
        groups: dict[int, list[str]] = {}  # one entry per distinct parameter: its names
        params = {}
        for name, p in module.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
            params[id(p)] = p
        self._aliases = {names[0]: tuple(names) for names in groups.values()}
        self._names = tuple(self._aliases)
        with torch.no_grad():
            for name in self._names:
                p = params[id(module.get_parameter(name))]
                stack = nn.Parameter(basis.constant(p.detach()), requires_grad=p.requires_grad)
                self._replace(name, stack)

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

    def basis_tensors(self) -> list[torch.Tensor]:
        """The parameter stacks, in the order of ``named_parameters`` (one per tied group)."""
        return [p for _, p in self._tensors()]

    def forward(self, t: float, *args, weights=None, **kwargs):
        """``module(*args, **kwargs)`` with its parameters at ``t`` (``weights``: their
        values, in :meth:`basis_tensors`' order, if a block looked them up)."""
        values = self._weights(t, weights)
        return functional_call(
            self.module, dict(zip(self._names, values)), args, kwargs, tie_weights=True
        )

    def extra_repr(self) -> str:
        return f"parameters={len(self._names)}, " + super().extra_repr()


def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if isinstance(module, TimeDependent) or any(
        isinstance(m, TimeDependent) for m in module.modules()
    ):
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


def time_dependent(
    module: nn.Module, *, n_basis: int = 1, basis: str = "piecewise_constant"
) -> TimeModule:
    """``module`` made time-dependent: a :class:`TimeModule` called as
    ``m(t, *args, **kwargs)``, every parameter a basis expansion with ``n_basis`` nodes of
    ``basis``, initialised from the module's value at every node; buffers stay.

    The module is taken over (its parameters are replaced in place); wrap a copy
    (``copy.deepcopy``) to keep the original. Example, a residual branch of one's own as
    the rate of a block::

        branch = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
        block = contnet.ContinuousBlock(contnet.time_dependent(branch, n_basis=4))
    """
    return TimeModule(module, basis_lib.get(basis, n_basis))
