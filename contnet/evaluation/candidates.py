"""The manifestations compression tries: for every block of a model, a node count (a
projection), a scheme and a step count, or an embedded pair run to a tolerance (adaptive
steps, ``atol = rtol / 100``). Each block keeps its own settings unless a candidate says
otherwise, so the model as given is always the first candidate; a setting can be given
for all blocks at once or one per block."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .. import basis as basis_lib
from .. import schemes as schemes_lib
from ..block import ContinuousBlock
from ..integrate import fixed_stats
from ..integrate.adaptive import check_tolerances, pair_of
from ..models import project

__all__ = ["apply_manifestation", "named_blocks", "plan", "describe", "scheme_name"]

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


def _tolerances(rtols, adaptive_scheme) -> list[float]:
    """The adaptive candidates' rtols (checked, each once) with their pair checked."""
    _named("adaptive_scheme", pair_of, adaptive_scheme)
    if rtols is None:
        return []
    out = []
    for r in _listed(rtols, "rtols"):
        r = _named("rtols", lambda v: check_tolerances(v, None)[0], r)
        if r not in out:
            out.append(r)
    return out


def plan(blocks, schemes, n_basis, steps, rtols=None, adaptive_scheme="dopri5"):
    """The candidates, each a tuple of ``(n_basis, scheme, n_steps, rtol, atol)`` per block
    (``rtol`` None: fixed steps), the model as given first and no candidate twice; every
    argument checked before anything runs. Each of ``rtols`` adds, for every node count,
    every block run with ``adaptive_scheme`` to that tolerance."""
    own = tuple((b.unit.basis.n_basis, *b.manifestation()) for _, b in blocks)
    out, seen = [own], {_candidate_key(own)}
    scheme_rows = _scheme_options(blocks, schemes)
    step_rows = _step_options(blocks, steps)
    tolerances = _tolerances(rtols, adaptive_scheme)
    for ks in _basis_options(blocks, n_basis):
        rows = [
            tuple(zip(ks, ss, ns, [None] * len(ks), [None] * len(ks)))
            for ss in scheme_rows
            for ns in step_rows
        ]
        own_steps = [b.n_steps for _, b in blocks]
        rows += [
            tuple((k, adaptive_scheme, n, r, r / 100) for k, n in zip(ks, own_steps))
            for r in tolerances
        ]
        for cand in rows:
            key = _candidate_key(cand)
            if key not in seen:
                seen.add(key)
                out.append(cand)
    return out


def _candidate_key(cand) -> tuple:
    # an adaptive block's step count is not used: not part of what it is
    return tuple((k, _key(s), None if r is not None else n, r, a) for k, s, n, r, a in cand)


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
            "rtol": r,
            "atol": a,
        }
        for (name, b), (k, s, n, r, a) in zip(blocks, cand)
    ]

    def shared(field):
        values = [d[field] for d in per_block]
        return values[0] if len(set(values)) == 1 else values

    return {
        "n_basis": shared("n_basis"),
        "scheme": shared("scheme"),
        "n_steps": shared("n_steps"),
        "rtol": shared("rtol"),
        "blocks": per_block,
    }


def apply_manifestation(model: nn.Module, choice: dict) -> nn.Module:
    """Give ``model`` (as it was when compressed) the manifestation of a candidate of
    :func:`compress` (its ``blocks`` entry): each block projected onto its node count and
    run with its scheme and step count. Every entry is checked before any block changes.
    Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    entries = choice.get("blocks") if isinstance(choice, dict) else None
    if not isinstance(entries, list):
        raise TypeError("choice must be a candidate of compress (a dict with 'blocks')")
    blocks, plan = dict(named_blocks(model)), []
    for entry in entries:
        try:
            name, k, scheme, n = (entry[f] for f in ("block", "n_basis", "scheme", "n_steps"))
        except (KeyError, TypeError):
            raise ValueError(
                f"choice's blocks entries must give block, n_basis, scheme and n_steps, got "
                f"{entry!r}"
            ) from None
        rtol, atol = entry.get("rtol"), entry.get("atol")
        b = blocks.get(name)
        if b is None:
            raise ValueError(f"choice names block {name!r}, which model does not hold")
        if rtol is not None:  # adaptive steps: an embedded pair to a tolerance
            pair_of(scheme)
            rtol, atol = check_tolerances(rtol, atol)
        tab = schemes_lib.get(scheme)
        if isinstance(tab, schemes_lib.LMResNet) and b.lm is None:
            raise ValueError(
                f"choice gives block {name!r} scheme 'lm', which it was not built with"
            )
        schemes_lib.check_n_steps(n)
        basis_lib.get(b.unit.basis.family, k)
        plan.append((b, k, (scheme, n, rtol, atol)))
    for b, k, manifestation in plan:
        if b.unit.basis.n_basis != k:
            project(b, k, steps=False)
        b.manifest(*manifestation)
    return model


def rate_evals(m_blocks, cand, batch: int) -> float:
    """Rate evaluations of one forward pass per input: a fixed block's
    (:func:`contnet.integrate.fixed_stats`), an adaptive one's as its last pass counted
    them (the latency runs)."""
    total = 0.0
    for b, (_, s, n, r, _) in zip(m_blocks, cand):
        if r is None:
            total += fixed_stats(s, n)["evaluations"]
        else:
            ev = b.last_stats["evaluations"]
            total += float(ev.sum()) / batch if isinstance(ev, torch.Tensor) else ev
    return total
