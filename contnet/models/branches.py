"""Conversion of any stage of residual branches of one structure into one continuous block.

A stage ``x <- x + f_i(x)``, ``i < N``, whose branches ``f_i`` share one structure (the same
modules, settings, parameter and buffer shapes; only the values differ) is the forward
Euler discretisation, with ``N`` steps over unit depth, of ``x' = N f(t, x)`` with
``f(t) = f_i`` on cell ``i``: one time-dependent copy of the branch whose node ``k`` holds
branch ``k``'s parameters (``piecewise_constant``, ``K = N``), and the running statistics
of its norms per cell. A ``ContinuousBlock`` of it with ``euler`` and ``n_steps = N``
computes the stage; every other manifestation, refinement, projection and compression
applies to it as to any block.

A conversion is exact and checked, or refused: branches that differ in structure are
refused naming the first difference, and the stage and the block are run on the caller's
example input (eval mode) and must agree to rounding after every branch."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..block import ContinuousBlock
from ..nn import TimeModule, time_dependent
from ..nn.time_module import RESIDUAL_COSINE
from .convert import first_disagreement

__all__ = ["from_branches"]

_PLAIN = (bool, int, float, str, type(None))


def _plain(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return isinstance(v, _PLAIN)


#: plain attributes that differ between a model's layers without changing what they
#: compute here: Hugging Face's index of a layer's key-value cache (read only with a cache)
_INDEXES = {"layer_idx"}


def _settings(m: nn.Module) -> tuple:
    """A module's own settings: its class, ``extra_repr`` and plain attributes (those a
    forward reads besides its tensors: strides, epsilons, head counts, flags)."""
    attrs = tuple(
        sorted(
            (k, v)
            for k, v in vars(m).items()
            if not k.startswith("_") and k != "training" and k not in _INDEXES and _plain(v)
        )
    )
    return type(m).__module__ + "." + type(m).__qualname__, m.extra_repr(), attrs


def _structure(branch: nn.Module) -> list[tuple[str, object]]:
    """What must be equal across the branches, as ``(where, what)`` pairs in a fixed order."""
    out = [(f"module {p or '(the branch)'}", _settings(m)) for p, m in branch.named_modules()]
    out += [(f"module {p or '(the branch)'} mode", m.training) for p, m in branch.named_modules()]
    groups: dict[int, list[str]] = {}
    for name, p in branch.named_parameters(remove_duplicate=False):
        out.append((f"parameter {name}", (tuple(p.shape), p.dtype, p.device, p.requires_grad)))
        groups.setdefault(id(p), []).append(name)
    for name, b in branch.named_buffers(remove_duplicate=False):
        out.append((f"buffer {name}", (tuple(b.shape), b.dtype, b.device)))
    out.append(("tied parameters", sorted(tuple(g) for g in groups.values() if len(g) > 1)))
    return out


def _check_structures(branches) -> None:
    first = _structure(branches[0])
    why = "a stage is stacked from branches of one structure"
    for i, b in enumerate(branches[1:], start=1):
        other = _structure(b)
        for (where, a), (where_i, v) in zip(first, other):
            if where != where_i:  # other modules, or other parameters or buffers
                got, want = where_i.split(" mode")[0], where.split(" mode")[0]
                raise ValueError(
                    f"branches[{i}] differs from branches[0]: it has {got} where branches[0] "
                    f"has {want}; {why}"
                )
            if a != v:
                raise ValueError(
                    f"branches[{i}] differs from branches[0] at {where}: {v!r} against {a!r}; {why}"
                )
        if len(first) != len(other):
            where = (first if len(first) > len(other) else other)[min(len(first), len(other))][0]
            raise ValueError(
                f"branches[{i}] differs from branches[0] at {where} (one has it); {why}"
            )


def _fill(unit: TimeModule, branches) -> None:
    """Node ``k`` of every parameter stack, and cell ``k`` of every norm's statistics, from
    branch ``k``; other buffers (one for all depths) must be equal in every branch."""
    stats = {name for name, _ in unit._stat_tensors()}
    with torch.no_grad():
        for name, stack in unit._tensors():
            for k, b in enumerate(branches):
                stack[k].copy_(b.get_parameter(name))
        for name, stack in unit._stat_tensors():
            for k, b in enumerate(branches):
                stack[k].copy_(b.get_buffer(name))
    first = dict(branches[0].named_buffers())
    for i, b in enumerate(branches[1:], start=1):
        for name, buf in b.named_buffers():
            if name not in stats and not torch.equal(buf, first[name]):
                raise ValueError(
                    f"branches[{i}] holds buffer {name} with other values than branches[0]'s: a "
                    "buffer that is not a norm's running statistic is one for all depths"
                )


def _check_update(branch, example, kwargs) -> None:
    """The branch gives an update: a tensor of the example's shape, not pointing along its
    input as a whole residual block's output ``x + f(x)`` does (then warned)."""
    out = branch(example, **kwargs)
    if not isinstance(out, torch.Tensor) or out.shape != example.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(
            f"branches[0] must return the update f(x), a tensor of the example's shape "
            f"{tuple(example.shape)}, got {got}: wrap a layer that returns more (a tuple) to "
            "return its update"
        )
    cos = F.cosine_similarity(out.flatten().double(), example.flatten().double(), 0).item()
    if cos > RESIDUAL_COSINE:
        warnings.warn(
            f"from_branches: branches[0]'s output is close to its input (cosine {cos:.3f} on "
            "the example), as a whole residual block x + f(x)'s is; the block computes "
            "x + f_i(x) for each branch, so a whole block would add x twice. Pass the "
            "branches f_i (a wrapper returning block(x) - x will do)",
            UserWarning,
            stacklevel=4,
        )


@torch.no_grad()
def _probe(branches, block: ContinuousBlock, example, kwargs) -> None:
    """Run the stage and the block's Euler steps on ``example`` in eval mode and raise
    unless every state agrees with the stage's to rounding, naming the first branch that
    does not; modes are restored."""
    from ..integrate import odeint

    modes = [(m, m.training) for b in (*branches, block) for m in b.modules()]
    try:
        for b in (*branches, block):
            b.eval()
        _check_update(branches[0], example, kwargs)
        unit, N = block.unit, len(branches)
        path = odeint(lambda t, x: unit(t, x, **kwargs), example, scheme="euler", n_steps=N,
                      trajectory=True)  # fmt: skip
        found = first_disagreement(branches, lambda b, x: x + b(x, **kwargs), example, path)
        if found is not None:
            i, err, scale = found
            raise ValueError(
                f"the converted block differs from the stage after branches[{i}] by {err:.3g} "
                f"on the example (eval mode, states of size {scale:.3g}): the branches "
                "compute something a time-dependent copy does not (a forward that reads its "
                "module's identity or state beyond its tensors)"
            )
    finally:
        for m, mode in modes:
            m.training = mode


def from_branches(branches, example: torch.Tensor, **kwargs) -> ContinuousBlock:
    """One ``ContinuousBlock`` for the stage ``x <- x + f_i(x)`` of the residual branches
    ``f_i`` (``branches``: a sequence of ``N`` modules of one structure, each computing the
    update of its block, however the user's blocks compute it).

    Returns a block of a time-dependent copy of the branch (:func:`contnet.time_dependent`)
    whose node ``k`` holds branch ``k``'s parameters (``piecewise_constant``, ``K = N``;
    its norms' running statistics per cell, cell ``k`` branch ``k``'s), the rate scaled by
    ``N``, ``euler`` with ``n_steps = N``: it computes the stage (its norms in eval mode;
    in training mode each cell's statistics are its branch's). It takes the branches'
    training mode; the branches are left as they were.

    ``example``: an input of the stage, on which the stage and the block are run (eval
    mode) and must agree to rounding after every branch; ``kwargs``: keyword arguments
    every branch takes (an attention mask), given to the block's calls the same way
    (``block(x, **kwargs)``). Refused with a ``ValueError``: branches that differ in
    structure (modules, their settings or modes, parameter or buffer shapes, tied
    parameters; the first difference named; Hugging Face's ``layer_idx``, a cache index,
    may differ), a buffer other than a norm's running statistics whose values differ
    between branches, a branch that does not return a tensor of the example's shape, and a
    probe that does not agree. A first branch whose output points along its input (a
    whole block ``x + f(x)`` given by mistake) is warned about.
    """
    if isinstance(branches, nn.Module) and not isinstance(branches, (nn.Sequential, nn.ModuleList)):
        raise TypeError("branches must be a sequence of modules (the f_i), got one module")
    try:
        branches = list(branches)
    except TypeError:
        raise TypeError(
            f"branches must be a sequence of modules, got {type(branches).__name__}"
        ) from None
    if not branches:
        raise ValueError("branches must hold at least one residual branch")
    for i, b in enumerate(branches):
        if not isinstance(b, nn.Module):
            raise TypeError(f"branches[{i}] must be an nn.Module, got {type(b).__name__}")
    if not isinstance(example, torch.Tensor) or not example.is_floating_point():
        raise TypeError(
            f"example must be a floating-point tensor (an input of the stage), got {example!r:.80}"
        )
    _check_structures(branches)
    N = len(branches)
    unit = time_dependent(branches[0], n_basis=N, residual_check=False)
    unit.scale = float(N)
    _fill(unit, branches)
    block = ContinuousBlock(unit, scheme="euler", n_steps=N)
    block.train(branches[0].training)
    for (_, m), (_, mine) in zip(branches[0].named_modules(), unit.module.named_modules()):
        mine.training = m.training
    _probe(branches, block, example, kwargs)
    return block
