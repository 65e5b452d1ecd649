"""Networks built from continuous blocks, and transformations of any module tree:
refinement in depth, projection onto another basis (the conversion of a residual stage,
:func:`from_resnet`, lives in :mod:`contnet.convert`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import basis as basis_lib
from . import schemes as schemes_lib
from .block import ContinuousBlock
from .convert import from_resnet
from .layers import (
    ACTIVATIONS,
    NORMS,
    ConvUnit,
    TimeBatchNorm2d,
    TimeDependent,
    _positive_int,
    check_state,
)

__all__ = [
    "ContinuousNet",
    "Stitch",
    "refine",
    "project",
    "from_resnet",
    "cuda_graph",
    "GraphedInference",
]


class Stitch(nn.Module):
    """Downsampling residual block between stages (pre-activation):
    ``y = act(norm1(x)); out = shortcut(y) + conv2(act(norm2(conv1(y))))`` with a stride-2
    3x3 ``conv1`` and a stride-2 1x1 ``shortcut``. Not time dependent."""

    def __init__(self, in_channels: int, out_channels: int, *, act="relu", norm="batch", stride=2):
        super().__init__()
        bias = norm is None
        self.act = ACTIVATIONS[act]
        self.norm1 = nn.BatchNorm2d(in_channels) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.norm2 = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=bias)

    def forward(self, x):
        y = self.act(self.norm1(x))
        return self.shortcut(y) + self.conv2(self.act(self.norm2(self.conv1(y))))


class ContinuousNet(nn.Module):
    """ContinuousNet for image classification (CIFAR-style).

    ``stem`` (3x3 conv) -> for each width: a :class:`ContinuousBlock` of a
    :class:`ConvUnit` (``preact`` residual unit, ``norm``, ``act``, weights in ``basis``
    with ``n_basis`` nodes), joined by downsampling :class:`Stitch` blocks -> norm, act,
    global average pooling -> linear head. Input ``(N, in_channels, H, W)``; output logits
    ``(N, num_classes)``. Every block's ``scheme``/``n_steps`` can be changed afterwards
    (see :meth:`set_manifestation`). ``config`` holds the constructor arguments.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths=(16, 32, 64),
        n_basis: int = 1,
        *,
        basis: str = "piecewise_constant",
        scheme="rk4",
        n_steps: int | None = None,
        act: str = "relu",
        norm: str | None = "batch",
        preact: bool = True,
        backprop: str = "direct",
    ):
        super().__init__()
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise TypeError(f"widths must be a sequence of ints, got {type(widths).__name__}")
        widths = tuple(widths)
        if not widths:
            raise ValueError("widths must name at least one stage width")
        for i, w in enumerate(widths):
            _positive_int(w, f"widths[{i}]")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMS)}")
        self.config = {
            "in_channels": _positive_int(in_channels, "in_channels"),
            "num_classes": _positive_int(num_classes, "num_classes"),
            "widths": list(widths),
            "n_basis": n_basis,
            "basis": basis,
            "scheme": scheme if isinstance(scheme, str) else schemes_lib.get(scheme).name,
            "n_steps": n_steps,
            "act": act,
            "norm": norm,
            "preact": preact,
            "backprop": backprop,
        }
        self.act = ACTIVATIONS.get(act)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=norm is None)
        unit = {"n_basis": n_basis, "basis": basis, "act": act, "norm": norm, "preact": preact}
        self.stages = nn.ModuleList(
            ContinuousBlock(ConvUnit(w, **unit), scheme=scheme, n_steps=n_steps, backprop=backprop)
            for w in widths
        )
        self.stitches = nn.ModuleList(
            Stitch(a, b, act=act, norm=norm) for a, b in zip(widths[:-1], widths[1:])
        )
        self.norm = nn.BatchNorm2d(widths[-1]) if norm else nn.Identity()
        self.head = nn.Linear(widths[-1], num_classes)

    @classmethod
    def from_config(cls, config: dict) -> ContinuousNet:
        """The network of a ``config`` (as :attr:`config` holds it)."""
        kw = dict(config)
        return cls(
            kw.pop("in_channels"), kw.pop("num_classes"), kw.pop("widths"), kw.pop("n_basis"), **kw
        )

    def set_manifestation(self, scheme=None, n_steps: int | None = None) -> None:
        """Set ``scheme`` and/or ``n_steps`` of every block."""
        for block in self.blocks():
            if scheme is not None:
                block.scheme = scheme
            if n_steps is not None:
                block.n_steps = n_steps

    def blocks(self) -> list[ContinuousBlock]:
        return list(self.stages)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.stages):
            if i:
                x = self.stitches[i - 1](x)
            x = block(x)
        return self.act(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_state(x, self.config["in_channels"], "in_channels")
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# ----------------------------------------------------------------------------- tree maps
# Optimizer statistics that are non-negative by construction: second moments (Adam, AdamW,
# NAdam, RAdam), their running maximum (AMSGrad), RMSprop's and Adadelta's running squares,
# Adagrad's sum of squares, Adamax's infinity norm, Rprop's step sizes.
_NONNEGATIVE_STATE = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "sum", "exp_inf", "step_size"}
)


def _nonnegative_map(M: torch.Tensor) -> torch.Tensor:
    """``M`` if it has no negative entry, else ``|M|`` with each row scaled to sum to one:
    every new value a weighted mean of the old ones. An L2 projection has negative entries,
    which would make a second moment negative (a NaN square root in Adam's step)."""
    if not (M < 0).any():
        return M
    A = M.abs()
    rows = A.sum(1, keepdim=True)
    return torch.where(rows > 0, A / rows.clamp_min(torch.finfo(A.dtype).tiny), A)


def _move_optimizer_state(optimizer, changes) -> None:
    """Put every new parameter in its old one's place in ``optimizer`` and carry its state
    over, mapping each state tensor of the old parameter's shape (momentum buffers, Adam
    moments) by the same matrix as the parameter -- the non-negative statistics of
    ``_NONNEGATIVE_STATE`` by :func:`_nonnegative_map` of it; scalars (``step``) are kept."""
    for old, new, M in changes:
        if not isinstance(new, nn.Parameter):
            continue
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = optimizer.state.pop(old, None)
        if state:
            optimizer.state[new] = {
                k: basis_lib.apply_matrix(_nonnegative_map(M) if k in _NONNEGATIVE_STATE else M, v)
                if isinstance(v, torch.Tensor) and v.shape == old.shape
                else v
                for k, v in state.items()
            }


def _basis_map(old: basis_lib.Basis, new: basis_lib.Basis) -> torch.Tensor:
    """The matrix taking node values in ``old`` to ``new``: the exact refinement matrix
    where ``new`` is ``old`` refined, else the L2 projection."""
    return old.refine_matrix() if new == old.refined() else old.projection_matrix(new)


def map_bases(module: nn.Module, target, optimizer=None) -> dict:
    """Move every time-dependent layer of ``module`` to the basis ``target(layer)`` (the
    batch norms of a :class:`ConvUnit` to as many cells as its new weight basis has), and
    the ``optimizer``'s state with them. Every target is computed, and every argument
    checked, before anything changes: an error leaves the module and the optimizer as
    they were."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    follow = {}  # a unit's norms: piecewise constant on its weights' cells
    for unit in module.modules():
        if isinstance(unit, ConvUnit):
            cells = basis_lib.get("piecewise_constant", target(unit.conv1).n_cells)
            follow.update({n: cells for n in (unit.norm1, unit.norm2) if n is not None})
    plans = []
    for m in module.modules():
        if isinstance(m, TimeDependent):
            new = follow.get(m) or target(m)
            if new != m.basis:
                plans.append((m, new, _basis_map(m.basis, new)))
    changes = []
    for m, new, M in plans:
        changes += m._apply_basis_map(new, M)
    if optimizer is not None:
        _move_optimizer_state(optimizer, changes)
    return {new: M for _, new, M in changes}


def refine(module: nn.Module, *, steps: bool = True, optimizer=None) -> dict:
    """Refine every time-dependent layer of ``module`` to the next finer basis (exact:
    ``theta(t)`` is unchanged) and, with ``steps``, double every block's ``n_steps``. The
    batch norms of a :class:`ConvUnit` follow its weights' cells (a ``legendre`` basis has
    one cell at every size: its norms keep theirs).

    The refined tensors are new parameters: pass the ``optimizer`` so that it holds them in
    place of the old ones, with its per-parameter state (momentum, moments) mapped by the
    same linear map. (A ``DistributedDataParallel`` wrapper must be built anew.) Returns
    ``{new_tensor: R}`` with ``new = R @ old`` along the node dimension.
    """
    maps = map_bases(module, lambda m: m.basis.refined(), optimizer)
    if steps:
        for m in module.modules():
            if isinstance(m, ContinuousBlock):
                m.n_steps = 2 * m.n_steps
    return maps


def project(module: nn.Module, n_basis: int, basis: str | None = None, *, optimizer=None) -> dict:
    """L2-project every time-dependent layer of ``module`` onto ``n_basis`` nodes of
    ``basis`` (default: each layer's own family). Batch-norm statistics of a
    :class:`ConvUnit` go onto as many cells as its new weight basis has; other batch norms
    onto ``n_basis`` cells. ``n_steps`` is left as it is. Returns ``{tensor: P}`` with
    ``new = P @ old`` along the node dimension.
    """
    if basis is not None:
        basis_lib.check_family(basis)

    def target(m):
        if isinstance(m, TimeBatchNorm2d):
            return basis_lib.get("piecewise_constant", n_basis)
        return basis_lib.get(basis or m.basis.family, n_basis)

    return map_bases(module, target, optimizer)


# ----------------------------------------------------------------------------- CUDA graphs
class GraphedInference:
    """Inference of a module replayed from a captured CUDA graph (see :func:`cuda_graph`)."""

    def __init__(
        self, module: nn.Module, example: torch.Tensor, warmup: int = 3, copy_output: bool = True
    ):
        self.module, self.copy_output = module, copy_output
        self.static_in = example.detach().clone()
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        # warm-up: allocations, cuDNN autotuning, contnet's per-manifestation caches
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                module(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_out = module(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.static_in
        if x.shape != s.shape or x.dtype != s.dtype or x.device != s.device:
            raise ValueError(
                f"x must match the captured input: shape {tuple(s.shape)}, {s.dtype}, {s.device}; got "
                f"{tuple(x.shape)}, {x.dtype}, {x.device} (capture again for another shape)"
            )
        s.copy_(x)
        self.graph.replay()
        return self.static_out.clone() if self.copy_output else self.static_out


def cuda_graph(
    module: nn.Module, example: torch.Tensor, *, warmup: int = 3, copy_output: bool = True
) -> GraphedInference:
    """Capture ``module``'s inference forward on inputs shaped like ``example`` in a CUDA
    graph; calling the result replays it (one launch instead of every kernel's).

    For small batches, where launches and Python dominate. The module should be in eval
    mode; its manifestation (``scheme``, ``n_steps``) and weights' storage are fixed at
    capture (capture again after changing them; weights updated in place are seen).
    ``copy_output=False`` returns the graph's own output buffer, overwritten by the next
    call.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(example, torch.Tensor) or example.device.type != "cuda":
        raise ValueError("cuda_graph needs an example input on a CUDA device")
    if module.training:
        raise ValueError("cuda_graph captures inference: call module.eval() first")
    return GraphedInference(module, example, warmup, copy_output)
