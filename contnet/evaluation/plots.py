"""PNG plots of the main job (matplotlib, no display needed)."""

from __future__ import annotations

import math
import pathlib

import torch

from ..nn import TimeConvNd, TimeLinear
from ..report import pyplot, save_figure

__all__ = ["training_curves", "manifestation_heatmap", "theta_over_depth"]


def training_curves(runs: dict, path) -> pathlib.Path:
    """Loss and test accuracy per epoch for one or more runs (``{label: history}``), with
    the epochs where the model was refined in depth marked."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, hist) in enumerate(runs.items()):
        color = f"C{i}"
        ep = [h["epoch"] for h in hist]
        ax_loss.plot(ep, [h["train_loss"] for h in hist], color=color, label=f"{label} train")
        ax_loss.plot(
            ep, [h["test_loss"] for h in hist], color=color, ls="--", label=f"{label} test"
        )
        ax_acc.plot(ep, [100 * h["test_acc"] for h in hist], color=color, label=label)
        for h in hist:
            if h.get("refined"):
                for ax in (ax_loss, ax_acc):
                    ax.axvline(h["epoch"] - 0.5, color=color, ls=":", lw=1)
                ax_acc.annotate(
                    f"K={h['n_basis']}",
                    (h["epoch"] - 0.5, 0.02),
                    xycoords=("data", "axes fraction"),
                    color=color,
                    fontsize=8,
                )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(
        xlabel="epoch",
        ylabel="test accuracy (%)",
        title="test accuracy (dotted: refinement in depth)",
    )
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def manifestation_heatmap(table: dict, path) -> pathlib.Path:
    """Test accuracy and log10 output drift per scheme x n_steps (a :func:`contnet.train.manifestation_table`)."""
    plt = pyplot()
    rows = table["rows"]
    schemes = list(rows)
    steps = list(next(iter(rows.values()))["drift"])
    has_acc = bool(next(iter(rows.values()))["accuracy"])
    panels = [("drift", "log10 relative output drift")] + (
        [("accuracy", "test accuracy (%)")] if has_acc else []
    )
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 0.6 * len(schemes) + 2.2), squeeze=False
    )
    for ax, (key, title) in zip(axes[0], panels):
        vals = [[rows[s][key][n] for n in steps] for s in schemes]
        if key == "drift":
            vals = [[math.log10(v) if v > 0 else float("nan") for v in r] for r in vals]
            fmt, cmap = "{:.1f}", "viridis_r"
        else:
            vals = [[100 * v for v in r] for r in vals]
            fmt, cmap = "{:.1f}", "viridis"
        im = ax.imshow(vals, cmap=cmap, aspect="auto")
        for i, r in enumerate(vals):
            for j, v in enumerate(r):
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color="w")
        ax.set_xticks(range(len(steps)), [str(n) for n in steps])
        ax.set_yticks(range(len(schemes)), schemes)
        ax.set(xlabel="n_steps", title=title)
        fig.colorbar(im, ax=ax)
    ref = table.get("reference")
    if ref:
        fig.suptitle(f"manifestations (reference: {ref[0]}, {ref[1]} steps)")
    fig.tight_layout()
    return save_figure(fig, path)


@torch.no_grad()
def theta_over_depth(model: torch.nn.Module, path, points: int = 200) -> pathlib.Path:
    """For every time-dependent convolution and linear layer, how its weights vary in
    depth: the relative deviation ``|theta(t) - mean| / |mean|`` from their depth average
    over ``t`` (line) and at each basis node (dots); the panel title gives ``|mean|``."""
    plt = pyplot()
    kinds = (TimeConvNd, TimeLinear)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    cols = min(3, max(1, len(convs)))
    rows = math.ceil(len(convs) / cols) if convs else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    ts = [(i + 0.5) / points for i in range(points)]
    for ax, (name, conv) in zip(axes.flat, convs):
        ws = torch.stack([conv.at(t)[0] for t in ts]).flatten(1).float()
        mean = ws.mean(0)
        scale = mean.norm().clamp_min(1e-12)
        ax.plot(ts, ((ws - mean).norm(dim=1) / scale).tolist(), lw=1.2)
        nodes = conv.basis.nodes().tolist()
        node_w = torch.stack([conv.at(min(max(t, 0.0), 1.0))[0] for t in nodes]).flatten(1).float()
        ax.plot(nodes, ((node_w - mean).norm(dim=1) / scale).tolist(), "o", ms=3)
        ax.set_title(
            f"{name} ({conv.basis.family}, K={conv.n_basis}), |mean|={scale.item():.2f}", fontsize=8
        )
        ax.set_xlabel("depth t", fontsize=8)
        ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(convs) :]:
        ax.axis("off")
    fig.suptitle(
        "weights over depth: |theta(t) - mean_t theta| / |mean_t theta| (dots: basis nodes)"
    )
    fig.tight_layout()
    return save_figure(fig, path)


def corruption_heatmap(table: dict, path) -> pathlib.Path:
    """Accuracy (%) per corruption x severity (a :func:`contnet.evaluation.corruption_table`),
    with the clean accuracy and the mean corruption accuracy in the title."""
    plt = pyplot()
    names = list(table["accuracy"])
    sev = table["severities"]
    vals = [[100 * a for a in table["accuracy"][n]] for n in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(sev) + 3.0, 0.45 * len(names) + 1.6))
    im = ax.imshow(vals, cmap="viridis", aspect="auto", vmin=0, vmax=100)
    for i, r in enumerate(vals):
        for j, v in enumerate(r):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="w")
    ax.set_xticks(range(len(sev)), [str(s) for s in sev])
    ax.set_yticks(range(len(names)), names)
    ax.set(
        xlabel="severity",
        title=f"accuracy (%): clean {100 * table['clean']:.1f}, "
        f"mean corrupted {100 * table['mean_corruption_accuracy']:.1f}",
    )
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)


def accuracy_vs_evaluations(table: dict, adaptive: dict, model_evals: dict, path) -> pathlib.Path:
    """Test accuracy against rate evaluations per input: every fixed manifestation of a
    :func:`contnet.evaluation.manifestation_table` (``model_evals[scheme][n]`` its cost) as
    a line per scheme, and the adaptive rows of a
    :func:`contnet.evaluation.adaptive_table`, batch-shared and per input, labelled by rtol."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for scheme, row in table["rows"].items():
        steps = list(row["accuracy"])
        ax.plot([model_evals[scheme][n] for n in steps], [100 * row["accuracy"][n] for n in steps],
                marker="o", ms=3, label=f"{scheme}, fixed steps")  # fmt: skip
    for mode, marker, dy in (("shared", "s", 6), ("per_input", "^", -11)):
        rows = [r for r in adaptive["rows"] if r["mode"] == mode]
        xs, ys = [r["evaluations_mean"] for r in rows], [100 * r["accuracy"] for r in rows]
        ax.plot(xs, ys, marker=marker, ls="--", label=f"{adaptive['scheme']} to rtol, {mode}")
        for r, xv, yv in zip(rows, xs, ys):
            ax.annotate(f"{r['rtol']:.0e}", (xv, yv), fontsize=7, xytext=(3, dy),
                        textcoords="offset points")  # fmt: skip
    ax.set(xscale="log", xlabel="rate evaluations per input (all blocks; mean)",
           ylabel="test accuracy (%)", title="accuracy against depth")  # fmt: skip
    ax.legend(fontsize=7)
    return save_figure(fig, path)
