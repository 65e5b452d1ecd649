"""A trained model in other manifestations: the same weights run with other schemes and
step counts, their outputs compared with a fine reference (drift), and the fitted order
of convergence. Works on any module holding ``ContinuousBlock``s."""

from __future__ import annotations

import torch
from torch import nn

from ..block import blocks_of
from ..schemes import fitted_order

__all__ = [
    "blocks_of",
    "set_manifestation",
    "predict",
    "fitted_order",
    "schemes_to_try",
    "manifestation_table",
    "manifestation_drift",
]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device="cpu") -> torch.Tensor:
    """``model``'s outputs on ``x`` (eval mode, no gradients; the mode is restored), in
    batches of ``batch_size`` on ``device``, gathered on the CPU."""
    was = model.training
    model.eval()
    out = torch.cat(
        [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )
    model.train(was)
    return out


def set_manifestation(blocks, scheme, n_steps) -> None:
    """Run every block of ``blocks`` with ``scheme`` and ``n_steps`` (a list gives each
    block its own): fixed steps, a block's tolerance cleared."""
    counts = n_steps if isinstance(n_steps, (list, tuple)) else [n_steps] * len(blocks)
    for b, n in zip(blocks, counts, strict=True):
        b.manifest(scheme, n)


def schemes_to_try(model: nn.Module) -> list:
    """The schemes to evaluate a trained model in: its own as its blocks hold it (a name,
    an LM-ResNet's ``lm`` too, or a ``ButcherTableau``), then euler, midpoint and rk4."""
    own = [b.scheme for b in blocks_of(model)]
    keyed = {(s if isinstance(s, str) else id(s)): s for s in own}
    for name in ("euler", "midpoint", "rk4"):
        keyed.setdefault(name, name)
    return list(keyed.values())


@torch.no_grad()
def manifestation_table(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    schemes,
    steps,
    reference=("rk4", 128),
    device="cpu",
):
    """Accuracy (if labels ``y`` are given) and output drift of ``model`` on ``x`` for every
    ``scheme x n_steps``, against the ``reference`` manifestation: drift is
    ``|logits - logits_ref| / |logits_ref|`` (Frobenius norms).

    Returns ``{"reference": ..., "rows": {scheme: {"drift": {n: v}, "accuracy": {n: v},
    "order": slope}}}``; ``order`` is fitted on step counts at or above the largest basis
    size in the model (where steps resolve every piece of ``theta``). Block settings are
    restored afterwards.
    """
    blocks = blocks_of(model)
    if not blocks:
        raise ValueError("model holds no ContinuousBlock")
    saved = [b.manifestation() for b in blocks]
    try:
        set_manifestation(blocks, *reference)
        ref = predict(model, x, device=device)
        k_max = max(getattr(b.unit, "n_basis", 1) for b in blocks)
        rows = {}
        for scheme in schemes:
            drift, acc = {}, {}
            for n in steps:
                set_manifestation(blocks, scheme, n)
                out = predict(model, x, device=device)
                drift[n] = ((out - ref).norm() / ref.norm()).item()
                if y is not None:
                    acc[n] = (out.argmax(1) == y).float().mean().item()
            fit = [n for n in steps if n >= k_max] or list(steps)
            rows[scheme] = {
                "drift": drift,
                "accuracy": acc,
                "order": fitted_order(fit, [drift[n] for n in fit]),
            }
        return {"reference": list(reference), "rows": rows}
    finally:
        for b, manifestation in zip(blocks, saved):
            b.manifest(*manifestation)


def manifestation_drift(model, x, schemes, steps, reference=("rk4", 64)):
    """Drift part of :func:`manifestation_table` as ``{scheme: {"drift": ..., "order": ...}}``."""
    table = manifestation_table(model, x, None, schemes, steps, reference)
    return {s: {"drift": r["drift"], "order": r["order"]} for s, r in table["rows"].items()}
