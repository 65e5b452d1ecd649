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

from ..models import project
from .candidates import apply_manifestation, describe, named_blocks, plan, rate_evals

__all__ = ["accuracy", "apply_manifestation", "compress", "measure_latency", "metric_on"]

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
        if iter(data) is data:
            raise TypeError(
                f"{name} must be readable more than once (a DataLoader, a list of batches, a "
                f"pair of tensors): every candidate reads it, got a {type(data).__name__} "
                "that reads once"
            )
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


def _budget(max_drop, max_rel_drop) -> tuple[float | None, float | None]:
    """The budget: ``max_drop`` points and/or ``max_rel_drop`` (a fraction of the
    original's metric), each finite and non-negative; 1 point where neither is given."""
    for name, v in (("max_drop", max_drop), ("max_rel_drop", max_rel_drop)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, got {v!r}")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if max_drop is None and max_rel_drop is None:
        max_drop = 1.0
    return (
        None if max_drop is None else float(max_drop),
        None if max_rel_drop is None else float(max_rel_drop),
    )


def _drops(original: float, value: float, higher_is_better: bool) -> tuple[float, float]:
    """How much worse ``value`` is than ``original``: in points (hundredths of the metric's
    unit) and as a fraction of ``|original|``; negative where it is better."""
    worse = (original - value) if higher_is_better else (value - original)
    if original != 0:
        rel = worse / abs(original)
    else:
        rel = 0.0 if worse == 0 else math.copysign(math.inf, worse)
    return 100 * worse, rel


def _checked(
    model, val, test, metric, higher_is_better, schemes, n_basis, steps, x, batch, tolerances
):
    """Every argument of :func:`compress` checked before anything is evaluated: its
    blocks, the candidates (schemes, node and step counts) and the latency input."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    blocks = named_blocks(model)
    if not blocks or any(getattr(b.unit, "basis", None) is None for _, b in blocks):
        raise ValueError(
            "model must hold ContinuousBlocks whose units have a weight basis, to vary them"
        )
    if not callable(metric):
        raise TypeError(f"metric must be callable as metric(outputs, targets), got {metric!r}")
    if not isinstance(higher_is_better, bool):
        raise TypeError(
            f"higher_is_better must be True or False (the metric's direction is not "
            f"guessed), got {higher_is_better!r}"
        )
    cands = plan(blocks, schemes, n_basis, steps, *tolerances)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"latency_batch must be an int >= 1, got {batch!r}")
    val_batches = _batches(val, batch, "val")
    if test is not None:
        _batches(test, batch, "test")
    first = next(iter(val_batches), None)
    if first is None:
        raise ValueError("val holds no batch to evaluate")
    if x is None:
        x = first[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"latency_input must be a tensor (default: the first validation inputs), got "
            f"{type(x).__name__}"
        )
    return blocks, cands, x


def _failed(entry: dict, model, error) -> dict:
    """An adaptive candidate whose solve stopped (``error``): no metric, never chosen."""
    nan = math.nan
    entry.update(parameters=sum(p.numel() for p in model.parameters()), latency_ms=nan, val=nan,
                 rate_evals=nan, drop_points=nan, rel_drop=nan, failed=str(error))  # fmt: skip
    return entry


def _within(c: dict, max_drop, max_rel_drop) -> bool:
    """Whether candidate ``c`` is within the budget (a NaN metric, or a failed candidate's,
    never is)."""
    ok = max_drop is None or c["drop_points"] <= max_drop
    return ok and (max_rel_drop is None or c["rel_drop"] <= max_rel_drop)


def _choose(candidates, max_drop, max_rel_drop):
    """The index of the fastest candidate within the budget (latencies within 5% of the
    fastest are ties, won by the fewest parameters). The original is within it (a drop of
    0) unless its metric is NaN, when nothing is chosen."""
    ok = [i for i, c in enumerate(candidates) if _within(c, max_drop, max_rel_drop)]
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
    higher_is_better: bool = True,
    max_drop: float | None = None,
    max_rel_drop: float | None = None,
    schemes=None,
    n_basis=None,
    steps=None,
    rtols=None,
    adaptive_scheme: str = "dopri5",
    latency_input: torch.Tensor | None = None,
    latency_batch: int = 256,
    device="cpu",
    log=print,
    min_run_time: float = 0.3,
) -> dict:
    """Evaluate cheaper manifestations of ``model`` and choose the fastest within budget.

    Candidates vary every ``ContinuousBlock`` of ``model``, each from its own settings:
    projected onto at most each of ``n_basis`` nodes (default: halving the largest basis's
    cells while every block's family allows), run with each of ``schemes`` (default: each
    block's own, then euler, midpoint and rk4) and each of ``steps`` (default: each
    block's own ``n_steps`` divided by 1, 2, 4, 8). An entry of ``schemes`` or ``steps``
    is one value for every block or a list of one per block (None in it: that block's
    own). Each of ``rtols`` adds, for every node count, every block run with the embedded
    pair ``adaptive_scheme`` to that tolerance (``atol = rtol / 100``; each block's own
    ``per_sample``; default: none). The model as given is always the first candidate,
    with a drop of 0. For each:
    parameters, measured inference latency (on ``latency_input``, default the first
    ``latency_batch`` validation inputs) and ``metric`` on ``val``.

    ``val`` (and ``test``): a pair ``(inputs, targets)`` of tensors or an iterable of such
    batches. ``metric(outputs, targets) -> float`` (default :func:`accuracy`);
    ``higher_is_better`` declares its direction (a loss: False; it is never guessed). The
    budget: ``max_drop`` points, hundredths of the metric's unit (one accuracy point is
    0.01), and/or ``max_rel_drop``, a fraction of the original's metric (0.02: 2% worse);
    by default 1 point. The choice: the fastest candidate within the budget on ``val``
    (latencies within 5% of the fastest count as ties, won by the fewest parameters). The
    test metric, if ``test`` is given, is measured for the original and the chosen
    candidate only, after choosing, and reported apart. ``model`` is left unchanged;
    :func:`apply_manifestation` gives it the choice.

    Returns ``{"original", "candidates", "choice", "metric", "higher_is_better",
    "max_drop_points", "max_rel_drop", "latency_batch"}``; each entry has ``n_basis``,
    ``scheme``, ``n_steps`` (one value where the blocks share it, else a list),
    ``rtol`` (None: fixed steps), ``blocks`` (every block's manifestation by name),
    ``parameters``, ``latency_ms``, ``val``, ``drop_points``, ``rel_drop``, ``rate_evals``
    (per input: measured on the latency input for adaptive blocks) (and the original and
    the choice ``test``).
    """
    max_drop, max_rel_drop = _budget(max_drop, max_rel_drop)
    if isinstance(min_run_time, bool) or not isinstance(min_run_time, (int, float)):
        raise TypeError(f"min_run_time must be a number of seconds, got {min_run_time!r}")
    if not min_run_time > 0 or not math.isfinite(min_run_time):
        raise ValueError(f"min_run_time must be a finite number of seconds > 0, got {min_run_time}")
    blocks, cands, xb = _checked(
        model,
        val,
        test,
        metric,
        higher_is_better,
        schemes,
        n_basis,
        steps,
        latency_input,
        latency_batch,
        (rtols, adaptive_scheme),
    )
    xb = xb.to(device)

    def measure(m, cand, base):
        entry = {**describe(blocks, cand), "parameters": sum(p.numel() for p in m.parameters())}
        entry["latency_ms"] = measure_latency(m, xb, min_run_time) * 1e3
        entry["val"] = metric_on(m, val, metric, device=device, name="val")
        entry["rate_evals"] = rate_evals([b for _, b in named_blocks(m)], cand, len(xb))
        if base is None:  # the original
            entry["drop_points"], entry["rel_drop"] = 0.0, 0.0
        else:
            entry["drop_points"], entry["rel_drop"] = _drops(base, entry["val"], higher_is_better)
        return entry

    candidates, copies = [], {}
    for cand in cands:
        ks = tuple(k for k, *_ in cand)
        if not candidates:
            m = model
        elif ks not in copies:
            m = copies[ks] = copy.deepcopy(model)
            for (_, b), k in zip(named_blocks(m), ks):
                if k != b.unit.basis.n_basis:
                    project(b, k, steps=False)
        else:
            m = copies[ks]
        saved = [b.manifestation() for _, b in named_blocks(m)]
        for (_, b), (_, *manifestation) in zip(named_blocks(m), cand):
            b.manifest(*manifestation)
        try:
            c = measure(m, cand, candidates[0]["val"] if candidates else None)
        except RuntimeError as e:  # a tolerance its controller could not meet (max_steps)
            if not candidates or all(r is None for *_, r, _ in cand):
                raise
            c = _failed(describe(blocks, cand), m, e)
        finally:
            for (_, b), manifestation in zip(named_blocks(m), saved):
                b.manifest(*manifestation)
        candidates.append(c)
        steps_or_tol = (
            f"n_steps={c['n_steps']!s:<6}" if c["rtol"] is None else f"rtol={c['rtol']!s:<9}"
        )
        log(
            f"  K={c['n_basis']!s:<6} {c['scheme']!s:<9} {steps_or_tol} "
            f"params {c['parameters']:>9,d}  "
            + (f"failed: {c['failed']}" if "failed" in c else
               f"val {c['val']:.4f}  latency {c['latency_ms']:.2f} ms")
        )  # fmt: skip
    original = candidates[0]
    best = _choose(candidates, max_drop, max_rel_drop)
    choice = None if best is None else candidates[best]
    if test is not None:  # read only now, after choosing
        original["test"] = metric_on(model, test, metric, device=device, name="test")
        if choice is not None and choice is not original:
            m = apply_manifestation(copy.deepcopy(model), choice)
            choice["test"] = metric_on(m, test, metric, device=device, name="test")
    return {
        "original": original,
        "metric": getattr(metric, "__name__", type(metric).__name__),
        "higher_is_better": higher_is_better,
        "max_drop_points": max_drop,
        "max_rel_drop": max_rel_drop,
        "latency_batch": len(xb),
        "candidates": candidates,
        "choice": choice,
    }
