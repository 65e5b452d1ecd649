"""Per-input adaptive depth: every sample of a batch keeps its own time, step size and
controller state, and leaves the batch when it reaches ``t1``.

An inference mode (no gradients). Each iteration every sample still integrating attempts
one step of its own size; the error size is taken per sample (the root mean square over
its elements, as :mod:`contnet.integrate.adaptive` takes it over the whole batch), so a
sample's steps do not depend on the rest of its batch. The work is the sum of the samples'
rate evaluations, not the batch size times the slowest sample's.

Samples at different times need the rate at different times. A stage evaluates the rate
once per group of samples that share a time: samples whose stage times fall in one cell
of ``cells`` (a rate that depends on time only through the cell, as one with
``piecewise_constant`` weights: exact), or, without ``cells``, samples at equal times.
Times live on the host (float64); the one host read per iteration is the samples' error
sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from .adaptive import (
    Controller,
    check_finite_start,
    error_norm,
    first_step,
    scaled,
    stage_time,
    trial_step,
)
from .rk import check_rate

__all__ = ["solve_per_sample"]


class _Rate:
    """The rate evaluated for a set of samples at their own times, grouped (see the module
    doc); counts each sample's evaluations."""

    def __init__(self, f, cells, evaluations):
        self.f, self.evaluations = f, evaluations
        self.cells = None if cells is None else np.asarray(cells, dtype=np.float64)

    def __call__(self, who: np.ndarray, times: np.ndarray, xs: torch.Tensor) -> torch.Tensor:
        keys = times if self.cells is None else np.searchsorted(self.cells, times, side="right")
        out = None
        for key in np.unique(keys):
            sel = np.nonzero(keys == key)[0]
            t = float(times[sel[0]])
            idx = torch.as_tensor(sel, device=xs.device)
            part = xs.index_select(0, idx)
            k = check_rate(self.f(t, part), part, t)
            if out is None:
                out = torch.empty_like(xs, dtype=k.dtype)
            out.index_copy_(0, idx, k)
        self.evaluations[who] += 1
        return out


def _per_sample(v: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A host vector as a tensor broadcasting against ``like`` along dim 0."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return t.reshape((-1,) + (1,) * (like.dim() - 1))


def _rms(v: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """Per sample, the root mean square of ``v / scale``, on the host (float64)."""
    return scaled(v, scale, dims=1).cpu().double().numpy()


def _first_step(rate, who, t, x, k0, q, rtol, atol) -> np.ndarray:
    """Hairer's rule per sample (:func:`contnet.integrate.adaptive.trial_step` and
    :func:`~contnet.integrate.adaptive.first_step`)."""
    scale = x.abs().mul(rtol).add(atol)
    d0, d1 = _rms(x, scale), _rms(k0, scale)
    h0 = trial_step(d0, d1)
    k1 = rate(who, t + h0, x + _per_sample(h0, x) * k0)
    return first_step(h0, d1, _rms(k1 - k0, scale) / h0, q)


def solve_per_sample(f, x0, tab, t0, t1, rtol, atol, ctrl: Controller, jump_t=(), kink_t=(),
                     cells=None):  # fmt: skip
    """Integrate every sample of ``x0`` (samples along dim 0) to the tolerance on its own.
    Returns the final states and per-sample ``evaluations``, ``accepted`` and ``rejected``
    (int64 tensors of the batch size)."""
    B, q = x0.shape[0], tab.embedded_order + 1
    if x0.numel() == 0:  # no sample, or samples of no elements
        zero = torch.zeros(B, dtype=torch.int64)
        return x0.clone(), {"evaluations": zero, "accepted": zero, "rejected": zero.clone()}
    check_finite_start(x0, per_sample=True)
    events = sorted({float(s) for s in (*jump_t, *kink_t) if t0 < s < t1}) if ctrl.jumps else []
    ev = np.asarray(events + [t1], dtype=np.float64)
    jumps = np.asarray(sorted(float(s) for s in jump_t), dtype=np.float64) if ctrl.jumps else ev[:0]
    evals, acc, rej = (np.zeros(B, dtype=np.int64) for _ in range(3))
    rate = _Rate(f, cells, evals)
    with torch.no_grad():
        x = x0.clone()
        t = np.full(B, t0, dtype=np.float64)
        all_ = np.arange(B)
        k_first = rate(all_, t, x)
        have = np.ones(B, dtype=bool)
        if ctrl.first_step is not None:
            h = np.full(B, float(ctrl.first_step))
        else:
            h = _first_step(rate, all_, t, x, k_first, q, rtol, atol)
        previous = np.ones(B)
        active = t < t1
        while active.any():
            A = np.nonzero(active)[0]
            over = A[acc[A] + rej[A] >= ctrl.max_steps]
            if over.size:
                i = int(over[0])
                raise RuntimeError(
                    f"max_steps={ctrl.max_steps} reached by sample {i} at t={float(t[i])!r} of "
                    f"[{t0}, {t1}] (rtol={rtol}, atol={atol}): raise Controller.max_steps or "
                    "the tolerances"
                )
            need = A[~have[A]]
            if need.size:
                idx = torch.as_tensor(need, device=x.device)
                k_first.index_copy_(0, idx, rate(need, t[need], x.index_select(0, idx)))
                have[need] = True
            tA, hA = t[A], np.maximum(h[A], ctrl.min_step)
            if not np.isfinite(hA).all():
                i = int(A[np.nonzero(~np.isfinite(hA))[0][0]])
                raise RuntimeError(
                    f"the step size of sample {i} is not finite at t={float(t[i])!r}: its state "
                    "or the rate is not finite there"
                )
            stop = ev[np.searchsorted(ev, tA, side="right")]
            landed = tA + hA >= stop
            t_next = np.where(landed, stop, tA + hA)
            hs = np.where(landed, t_next - tA, hA)
            if np.any(tA + hs == tA):
                i = int(A[np.nonzero(tA + hs == tA)[0][0]])
                raise RuntimeError(
                    f"the step size of sample {i} fell to {float(h[i]):.3g} at t={float(t[i])!r}, below "
                    "what float64 time resolves: its solution may blow up or not be finite there"
                )
            idx = torch.as_tensor(A, device=x.device)
            xA = x.index_select(0, idx)
            hv = _per_sample(hs, xA)
            ks = [k_first.index_select(0, idx)]
            for i in range(1, tab.stages):
                inc = sum(a * k for a, k in zip(tab.a[i][:i], ks) if a != 0.0)
                ks.append(rate(A, stage_time(tab.c[i], tA, t_next, hs), xA + hv * inc))
            x_new = xA + hv * sum(b * k for b, k in zip(tab.b, ks) if b != 0.0)
            on_jump = np.isin(t_next, jumps)
            if tab.fsal:
                t_end = np.where(on_jump, np.nextafter(t_next, tA), t_next)
                ks.append(rate(A, t_end, x_new))
            # each sample's error with h = 1, times its own step: (h r)^2 = h^2 r^2
            _, sq = error_norm(xA, x_new, ks, 1.0, tab, rtol, atol)
            ratio = np.abs(hs) * np.sqrt(sq.cpu().double().numpy())  # the host read
            ok = ratio <= 1.0
            failing = ~ok & (hs <= ctrl.min_step)
            if failing.any():
                i = int(A[np.nonzero(failing)[0][0]])
                raise RuntimeError(
                    f"a step of min_step={ctrl.min_step} fails the tolerance for sample {i} at "
                    f"t={float(t[i])!r}: lower Controller.min_step or loosen rtol/atol"
                )
            good = A[ok]
            if good.size:
                gi = torch.as_tensor(np.nonzero(ok)[0], device=x.device)
                gidx = torch.as_tensor(good, device=x.device)
                x.index_copy_(0, gidx, x_new.index_select(0, gi))
                t[good] = t_next[ok]
                reuse = ok & ~on_jump if tab.fsal else np.zeros_like(ok)
                if reuse.any():
                    ri = torch.as_tensor(np.nonzero(reuse)[0], device=x.device)
                    k_first.index_copy_(0, torch.as_tensor(A[reuse], device=x.device),
                                        ks[-1].index_select(0, ri))  # fmt: skip
                have[A[ok & ~reuse]] = False
                acc[good] += 1
            rej[A[~ok]] += 1
            grown = hs * ctrl.factors(ratio, previous[A], q)
            h[A] = np.where(ok & landed, np.maximum(grown, hA), grown)  # as in adaptive.solve
            previous[good] = np.maximum(ratio[ok], 1e-4)
            active = t < t1
    as_t = lambda v: torch.as_tensor(v, dtype=torch.int64)  # noqa: E731
    return x, {"evaluations": as_t(evals), "accepted": as_t(acc), "rejected": as_t(rej)}


def check_inference(x0, f) -> None:
    """Per-sample steps are an inference mode: refuse a call that would need gradients."""
    params = list(f.parameters()) if isinstance(f, torch.nn.Module) else []
    if torch.is_grad_enabled() and (x0.requires_grad or any(p.requires_grad for p in params)):
        raise ValueError(
            "per_sample=True is an inference mode (each sample's steps are its own, taken "
            "without gradients): run it under torch.no_grad() or torch.inference_mode(), or "
            "use per_sample=False to train through adaptive steps"
        )
