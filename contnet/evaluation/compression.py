"""Compression of a trained model: cheaper manifestations of the same weights (projection
onto fewer basis nodes, other schemes, fewer steps), each measured, the cheapest within
an accuracy budget chosen.

The choice is made on a validation split, never on the test set: the test metric of the
original and of the chosen candidate is reported apart, for the record. Any module whose
``ContinuousBlock`` s are to be varied can be compressed, with any metric."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .. import basis as basis_lib
from .. import schemes as schemes_lib
from ..block import blocks_of
from ..models import project
from .manifestation import schemes_to_try, set_manifestation

__all__ = ["accuracy", "compress", "measure_latency", "metric_on"]

# latencies within this factor of the fastest are ties (timing noise), won by size
_TIE = 1.05


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Classification accuracy: the fraction of rows of ``outputs`` whose largest entry is
    at the index ``targets`` gives (the default metric of :func:`compress`)."""
    return (outputs.argmax(1) == targets).float().mean().item()


def _batches(data, batch_size: int, name: str = "data"):
    """``(inputs, targets)`` batches of ``data`` (called ``name`` in errors): a pair of
    tensors (cut into batches along dim 0) or an iterable of such pairs (a DataLoader)."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        x, y = data
        if len(x) != len(y):
            raise ValueError(
                f"{name} must pair inputs and targets of one length, got {len(x)} and {len(y)}"
            )
        return [
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)
        ]
    if isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str)):
        return _checked_pairs(data, name)
    raise TypeError(
        f"{name} must be a pair (inputs, targets) of tensors or an iterable of such batches, "
        f"got {type(data).__name__}"
    )


class _checked_pairs:
    """An iterable of batches, each checked to be an ``(inputs, targets)`` pair."""

    def __init__(self, data, name):
        self.data, self.name = data, name

    def __iter__(self):
        for item in self.data:
            if not (
                isinstance(item, (tuple, list))
                and len(item) == 2
                and all(isinstance(t, torch.Tensor) for t in item)
            ):
                raise TypeError(
                    f"{self.name} must yield (inputs, targets) pairs of tensors, got "
                    f"{type(item).__name__}"
                )
            yield item


@torch.no_grad()
def metric_on(
    model: nn.Module, data, metric=accuracy, *, batch_size=512, device="cpu", name="data"
) -> float:
    """``metric(outputs, targets)`` of ``model`` (eval mode, restored after) over all of
    ``data``: the outputs and targets of every batch, concatenated."""
    was = model.training
    model.eval()
    try:
        outs, targets = [], []
        for x, y in _batches(data, batch_size, name):
            outs.append(model(x.to(device)).cpu())
            targets.append(y.cpu())
        if not outs:
            raise ValueError(f"{name} holds no batch to evaluate")
        return float(metric(torch.cat(outs), torch.cat(targets)))
    finally:
        model.train(was)


def measure_latency(model: nn.Module, x: torch.Tensor, min_run_time: float = 0.3) -> float:
    """Median seconds of one inference forward of ``model`` on ``x`` (no grad, eval mode)."""
    import torch.utils.benchmark as tb

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
            t = tb.Timer(
                "model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads()
            )
            return t.blocked_autorange(min_run_time=min_run_time).median
    finally:
        model.train(was)


def _halved(family: str, k: int) -> int:
    """The next smaller node count of ``family`` (half the cells)."""
    return (k + 1) // 2 if family == "fem_linear" else k // 2


def _basis_candidates(bases, n_basis) -> list[int]:
    """Node counts to try (the largest first: the original). A count caps each block's
    own: a block with fewer nodes keeps its basis. Default: halving the largest basis's
    cells while every block's family allows the count."""
    k0 = max(b.n_basis for b in bases)
    if n_basis is None:
        family, out = next(b.family for b in bases if b.n_basis == k0), [k0]
        while True:
            k = _halved(family, out[-1])
            try:  # while every block can take it
                for b in bases:
                    basis_lib.get(b.family, min(k, b.n_basis))
            except ValueError:
                return out
            if k >= out[-1]:
                return out
            out.append(k)
    if isinstance(n_basis, (str, bytes)) or not isinstance(n_basis, Iterable):
        raise TypeError(f"n_basis must be a list of node counts, got {type(n_basis).__name__}")
    counts = list(n_basis)
    for k in counts:
        for b in bases:  # every block can take it (checked before anything is evaluated)
            try:
                basis_lib.get(b.family, min(k, b.n_basis))
            except (TypeError, ValueError) as e:
                raise type(e)(f"n_basis candidate {k!r}: {e}") from None
    return counts


def _step_candidates(blocks, steps) -> list:
    """Step counts to try: the given ones for every block, or (default) each block's own
    divided by 1, 2, 4, 8 (a list per block where they differ)."""
    if steps is not None:
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
            raise TypeError(f"steps must be a list of step counts, got {type(steps).__name__}")
        return [_named("steps", schemes_lib.check_n_steps, n) for n in steps]
    own = [b.n_steps for b in blocks]
    out = []
    for d in (1, 2, 4, 8):
        counts = [max(1, n // d) for n in own]
        value = counts[0] if len(set(counts)) == 1 else counts
        if value not in out:
            out.append(value)
    return out


def _named(name: str, check, value):
    """``check(value)``, its error prefixed with the argument ``name`` it came in."""
    try:
        return check(value)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None


def _check_budget(max_drop) -> float:
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)):
        raise TypeError(f"max_drop must be a number of metric points, got {max_drop!r}")
    if not math.isfinite(max_drop):
        raise ValueError(f"max_drop must be a finite number of metric points, got {max_drop}")
    return float(max_drop)


def _describe(blocks) -> dict:
    bases = [b.unit.basis for b in blocks]
    ks = [b.n_basis for b in bases]
    steps = [b.n_steps for b in blocks]
    s0 = blocks[0].scheme
    return {
        "n_basis": ks[0] if len(set(ks)) == 1 else ks,
        "scheme": s0 if isinstance(s0, str) else s0.name,
        "n_steps": steps[0] if len(set(steps)) == 1 else steps,
    }


def _checked(model, val, test, metric, max_drop, schemes, n_basis, steps, x, batch):
    """Every argument of :func:`compress` checked before anything is evaluated: its
    blocks, schemes and their tableaux, node counts, step counts and latency input."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    blocks = blocks_of(model)
    if not blocks or any(getattr(b.unit, "basis", None) is None for b in blocks):
        raise ValueError(
            "model must hold ContinuousBlocks whose units have a weight basis, to vary them"
        )
    if not callable(metric):
        raise TypeError(f"metric must be callable as metric(outputs, targets), got {metric!r}")
    _check_budget(max_drop)
    schemes = list(schemes) if schemes is not None else schemes_to_try(model)
    tableaux = [_named("schemes", schemes_lib.get, s) for s in schemes]
    counts = _basis_candidates([b.unit.basis for b in blocks], n_basis)
    step_counts = _step_candidates(blocks, steps)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"latency_batch must be an int >= 1, got {batch!r}")
    val_batches = _batches(val, batch, "val")
    if test is not None:
        _batches(test, batch, "test")
    if x is None:
        x = next(iter(val_batches), (None,))[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"latency_input must be a tensor (default: the first validation inputs), got "
            f"{type(x).__name__}"
        )
    return blocks, schemes, tableaux, counts, step_counts, x


def _choose(candidates, max_drop: float):
    """The index of the fastest candidate within ``max_drop`` points of the original
    (latencies within 5% of the fastest are ties, won by the fewest parameters), or None."""
    ok = [i for i, c in enumerate(candidates) if c["drop_points"] <= max_drop]
    if not ok:
        return None
    fastest = min(candidates[i]["latency_ms"] for i in ok)
    ties = [i for i in ok if candidates[i]["latency_ms"] <= _TIE * fastest]
    return min(ties, key=lambda i: (candidates[i]["parameters"], candidates[i]["latency_ms"]))


def compress(
    model: nn.Module,
    val,
    *,
    test=None,
    metric: Callable = accuracy,
    max_drop: float = 1.0,
    schemes=None,
    n_basis=None,
    steps=None,
    latency_input: torch.Tensor | None = None,
    latency_batch: int = 256,
    device="cpu",
    log=print,
    min_run_time: float = 0.3,
) -> dict:
    """Evaluate cheaper manifestations of ``model`` and choose the fastest within budget.

    Candidates: every ``ContinuousBlock`` of ``model`` projected onto at most ``n_basis``
    nodes (default: halving the largest basis's cells while its family allows), run with
    each of ``schemes`` (default: the blocks' own, euler, midpoint, rk4) and ``steps``
    (default: each block's own ``n_steps`` divided by 1, 2, 4, 8). For each: parameters,
    measured inference latency (on ``latency_input``, default the first
    ``latency_batch`` validation inputs) and ``metric`` on ``val``.

    ``val`` (and ``test``): a pair ``(inputs, targets)`` of tensors or an iterable of such
    batches. ``metric(outputs, targets) -> float``, higher is better (default
    :func:`accuracy`); ``max_drop`` is in points, hundredths of the metric's unit (one
    accuracy point is 0.01). The choice: the fastest candidate whose validation metric is
    at most ``max_drop`` points below the original's (latencies within 5% of the fastest
    count as ties, won by the fewest parameters). The test metric, if ``test`` is given,
    is measured for the original and the chosen candidate only, and reported apart.
    ``model`` is left unchanged.

    Returns ``{"original", "candidates", "choice", "metric", "max_drop_points",
    "latency_batch"}``; each entry has ``n_basis``, ``scheme``, ``n_steps``,
    ``parameters``, ``latency_ms``, ``val`` (and the candidates ``drop_points``; the
    original and the choice ``test``).
    """
    blocks, schemes, tableaux, counts, step_counts, xb = _checked(
        model, val, test, metric, max_drop, schemes, n_basis, steps, latency_input, latency_batch
    )
    xb = xb.to(device)

    def measure(m):
        return {
            "parameters": sum(p.numel() for p in m.parameters()),
            "latency_ms": measure_latency(m, xb, min_run_time) * 1e3,
            "val": metric_on(m, val, metric, device=device, name="val"),
        }

    original = {**_describe(blocks), **measure(model)}
    candidates, runs = [], []
    for k in counts:
        m = copy.deepcopy(model)
        for b in blocks_of(m):
            if min(k, b.unit.basis.n_basis) != b.unit.basis.n_basis:
                project(b, min(k, b.unit.basis.n_basis))
        for scheme, tableau in zip(schemes, tableaux):
            for n in step_counts:
                set_manifestation(blocks_of(m), scheme, n)
                cand = {**_describe(blocks_of(m)), "scheme": tableau.name, **measure(m)}
                cand["rate_evals"] = sum(tableau.stages * b.n_steps for b in blocks_of(m))
                cand["drop_points"] = 100 * (original["val"] - cand["val"])
                candidates.append(cand)
                runs.append((m, scheme, n))
                log(
                    f"  K={cand['n_basis']!s:<4} {tableau.name:<9s} n_steps={cand['n_steps']!s:<4} "
                    f"params {cand['parameters']:>9,d}  val {cand['val']:.4f}  "
                    f"latency {cand['latency_ms']:.2f} ms"
                )
    best = _choose(candidates, float(max_drop))
    choice = None if best is None else candidates[best]
    if test is not None:  # read only now, after choosing
        original["test"] = metric_on(model, test, metric, device=device, name="test")
        if choice is not None:
            m, scheme, n = runs[best]
            set_manifestation(blocks_of(m), scheme, n)
            choice["test"] = metric_on(m, test, metric, device=device, name="test")
    return {
        "original": original,
        "metric": getattr(metric, "__name__", type(metric).__name__),
        "max_drop_points": float(max_drop),
        "latency_batch": len(xb),
        "candidates": candidates,
        "choice": choice,
    }
