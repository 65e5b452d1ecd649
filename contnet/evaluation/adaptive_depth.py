"""A trained model run to tolerances instead of fixed steps: accuracy, drift and the rate
evaluations each input costs, batch-shared and per input, beside the fixed-step
manifestations' cost."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..block import blocks_of
from ..integrate import fixed_stats

__all__ = ["RTOLS", "adaptive_table", "fixed_evaluations"]

#: the tolerances ``contnet eval`` tries
RTOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


def fixed_evaluations(model: nn.Module, scheme, n_steps: int) -> int:
    """Rate evaluations per input of every block stepping ``n_steps`` fixed steps of
    ``scheme`` (:func:`contnet.integrate.fixed_stats`, summed over the blocks)."""
    return fixed_stats(scheme, n_steps)["evaluations"] * len(blocks_of(model))


@torch.no_grad()
def adaptive_table(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    rtols=RTOLS,
    scheme: str = "dopri5",
    reference=("rk4", 128),
    batch_size: int = 512,
    device="cpu",
) -> dict:
    """For every ``rtol`` (``atol = rtol / 100``) and both modes (``shared``: one step size
    for a batch; ``per_input``: each input its own, :mod:`contnet.integrate.per_sample`):
    accuracy (with labels), drift against the ``reference`` manifestation (as
    :func:`contnet.evaluation.manifestation_table` measures it), the mean and largest rate
    evaluations an input cost over all blocks (in the shared mode, each input of a batch
    is charged the batch's), and the wall time. Block settings and the training mode are
    restored afterwards."""
    blocks = blocks_of(model)
    if not blocks:
        raise ValueError("model holds no ContinuousBlock")
    saved = [(b.manifestation(), b.per_sample) for b in blocks]
    was = model.training
    model.eval()
    try:
        for b in blocks:
            b.manifest(*reference)
        ref = _run(model, blocks, x, batch_size, device)[0]
        rows = []
        for rtol in rtols:
            for mode in ("shared", "per_input"):
                for b in blocks:
                    b.manifest(scheme, b.n_steps, rtol, rtol / 100)
                    b.per_sample = mode != "shared"
                t0 = time.perf_counter()
                out, evals = _run(model, blocks, x, batch_size, device)
                row = {
                    "rtol": rtol,
                    "mode": mode,
                    "wall_s": time.perf_counter() - t0,
                    "drift": ((out - ref).norm() / ref.norm()).item(),
                    "evaluations_mean": evals.float().mean().item(),
                    "evaluations_max": int(evals.max()),
                }
                if y is not None:
                    row["accuracy"] = (out.argmax(1) == y).float().mean().item()
                rows.append(row)
        return {"scheme": scheme, "reference": list(reference), "rows": rows}
    finally:
        for b, (manifestation, per_sample) in zip(blocks, saved):
            b.manifest(*manifestation)
            b.per_sample = per_sample
        model.train(was)


def _run(model, blocks, x, batch_size, device):
    """Outputs (on the CPU) and each input's rate evaluations summed over the blocks."""
    outs, evals = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        outs.append(model(xb).cpu())
        per = torch.zeros(len(xb), dtype=torch.int64)
        for b in blocks:
            e = b.last_stats["evaluations"]
            per += e.cpu() if isinstance(e, torch.Tensor) else e
        evals.append(per)
    return torch.cat(outs), torch.cat(evals)
