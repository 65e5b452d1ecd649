"""The manifestations compression tries: for every block of a model, a node count (a
projection), a scheme and a step count. Each block keeps its own settings unless a
candidate says otherwise, so the model as given is always the first candidate; a setting
can be given for all blocks at once or one per block."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .. import basis as basis_lib
from .. import schemes as schemes_lib
from ..block import ContinuousBlock

__all__ = ["named_blocks", "plan", "describe", "scheme_name"]

#: the default schemes tried beside each block's own
DEFAULT_SCHEMES = ("euler", "midpoint", "rk4")
#: the default step counts: each block's own divided by these
DEFAULT_DIVISORS = (1, 2, 4, 8)


def named_blocks(model: nn.Module) -> list[tuple[str, ContinuousBlock]]:
    """Every ``ContinuousBlock`` of ``model`` with its name in the module tree."""
    return [(n or "(model)", m) for n, m in model.named_modules() if isinstance(m, ContinuousBlock)]


def scheme_name(scheme) -> str:
    return scheme if isinstance(scheme, str) else scheme.name


def _key(scheme):
    return scheme if isinstance(scheme, str) else id(scheme)


def _listed(value, name: str) -> list:
    """``value`` as a list of candidates, at least one (nothing to try is not a request to
    compress)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of candidates, got {type(value).__name__}")
    out = list(value)
    if not out:
        raise ValueError(f"{name} must hold at least one candidate, got none")
    return out


def _per_block(entry, n_blocks: int, name: str) -> list:
    """A candidate setting for every block: one value for all, or a list of one per block
    (None in it: that block's own)."""
    if isinstance(entry, (list, tuple)):
        if len(entry) != n_blocks:
            raise ValueError(
                f"{name} candidate {list(entry)!r} must give one value per block ({n_blocks})"
            )
        return list(entry)
    return [entry] * n_blocks


def _named(name: str, check, value):
    """``check(value)``, its error prefixed with the argument ``name`` it came in."""
    try:
        return check(value)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None


def _scheme_options(blocks, schemes) -> list[list]:
    """Per-block schemes of every scheme candidate (checked: a known scheme, and ``lm``
    only for a block that owns its learned ``k(t)``). Default: each block's own, then
    euler, midpoint and rk4 for all."""
    entries = [None, *DEFAULT_SCHEMES] if schemes is None else _listed(schemes, "schemes")
    options = []
    for entry in entries:
        row = []
        for (name, b), s in zip(blocks, _per_block(entry, len(blocks), "schemes")):
            if s is None:
                row.append(b.scheme)
                continue
            tab = _named("schemes", schemes_lib.get, s)
            if isinstance(tab, schemes_lib.LMResNet) and b.lm is None:
                raise ValueError(
                    f"schemes candidate {s!r}: block {name!r} was not built with scheme='lm' "
                    "(it has no learned k(t))"
                )
            row.append(s)
        options.append(row)
    return options


def _step_options(blocks, steps) -> list[list[int]]:
    """Per-block step counts of every step candidate. Default: each block's own divided by
    1, 2, 4, 8 (at least 1)."""
    own = [b.n_steps for _, b in blocks]
    if steps is None:
        return [[max(1, n // d) for n in own] for d in DEFAULT_DIVISORS]
    options = []
    for entry in _listed(steps, "steps"):
        row = _per_block(entry, len(blocks), "steps")
        options.append(
            [
                n0 if n is None else _named("steps", schemes_lib.check_n_steps, n)
                for n, n0 in zip(row, own)
            ]
        )
    return options


def _halved(family: str, k: int) -> int:
    """The next smaller node count of ``family`` (half the cells)."""
    return (k + 1) // 2 if family == "fem_linear" else k // 2


def _basis_options(blocks, n_basis) -> list[list[int]]:
    """Per-block node counts of every projection candidate, the blocks' own first. A count
    caps each block's own (a block with fewer nodes keeps its basis). Default: halving the
    largest basis's cells while every block's family allows the count."""
    bases = [b.unit.basis for _, b in blocks]
    own = [b.n_basis for b in bases]
    if n_basis is None:
        k0 = max(own)
        family, counts = next(b.family for b in bases if b.n_basis == k0), [k0]
        while True:
            k = _halved(family, counts[-1])
            try:  # while every block can take it
                for b in bases:
                    basis_lib.get(b.family, min(k, b.n_basis))
            except ValueError:
                break
            if k >= counts[-1]:
                break
            counts.append(k)
    else:
        counts = _listed(n_basis, "n_basis")
        for k in counts:
            if isinstance(k, int) and not isinstance(k, bool) and k > max(own):
                raise ValueError(
                    f"n_basis candidate {k} is more nodes than any block has ({max(own)}): "
                    "a projection only reduces them"
                )
            for b in bases:  # every block can take it (checked before anything is evaluated)
                try:
                    basis_lib.get(b.family, min(k, b.n_basis))
                except (TypeError, ValueError) as e:
                    raise type(e)(f"n_basis candidate {k!r}: {e}") from None
    return [own] + [[min(k, n) for n in own] for k in counts]


def plan(blocks, schemes, n_basis, steps) -> list[tuple[tuple, ...]]:
    """The candidates, each a tuple of ``(n_basis, scheme, n_steps)`` per block, the model
    as given first and no candidate twice; every argument checked before anything runs."""
    own = tuple((b.unit.basis.n_basis, b.scheme, b.n_steps) for _, b in blocks)
    out, seen = [own], {_candidate_key(own)}
    scheme_rows = _scheme_options(blocks, schemes)
    step_rows = _step_options(blocks, steps)
    for ks in _basis_options(blocks, n_basis):
        for ss in scheme_rows:
            for ns in step_rows:
                cand = tuple(zip(ks, ss, ns))
                key = _candidate_key(cand)
                if key not in seen:
                    seen.add(key)
                    out.append(cand)
    return out


def _candidate_key(cand) -> tuple:
    return tuple((k, _key(s), n) for k, s, n in cand)


def describe(blocks, cand) -> dict:
    """A candidate in words: every block's manifestation by name, and each setting once
    where the blocks share it (else a list, one per block)."""
    per_block = [
        {
            "block": name,
            "basis": b.unit.basis.family,
            "n_basis": k,
            "scheme": scheme_name(s),
            "n_steps": n,
        }
        for (name, b), (k, s, n) in zip(blocks, cand)
    ]

    def shared(field):
        values = [d[field] for d in per_block]
        return values[0] if len(set(values)) == 1 else values

    return {
        "n_basis": shared("n_basis"),
        "scheme": shared("scheme"),
        "n_steps": shared("n_steps"),
        "blocks": per_block,
    }
