"""The papers' recipes as presets: the training settings each paper published, its arms
(the models its table compares) and the figures it reports, for ``contnet train --preset``
and ``contnet reproduce``.

Settings from the anchors' own papers and repositories:

- ContinuousNet (Queiruga et al. 2020, "Continuous-in-Depth Neural Networks") on CIFAR-10:
  widths 16/32/64, batch norm, SGD lr 0.1 with momentum 0.9, weight decay 5e-4, lr x0.1
  at epochs 80/120/140, 150 epochs, batch 128, random crop + flip.
- Stateful ODE-Nets (Queiruga et al. 2021, "Stateful ODE-Nets using Basis Function
  Expansions") on CIFAR-10: N = K = 16 basis functions and steps, euler, 180 epochs, lr 0.1
  decayed x0.1 at 80/120/160, weight decay 5e-4; refined 1 -> 2 -> 4 -> 8 -> 16; projected
  without retraining to N = 8.

The reported figures are test accuracies (%) and, where given, training minutes on the
papers' hardware (not comparable with another machine's; the ratios between arms are).
The papers train on all 50,000 training images: the presets hold none out
(``val_fraction`` 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Arm", "Preset", "PRESETS", "get", "scaled"]


@dataclass(frozen=True)
class Arm:
    """One model of a paper's table: its settings over the preset's, and what the paper
    reports for it (``accuracy`` in %, ``minutes`` of training; None where not given)."""

    name: str
    settings: dict
    paper: str
    accuracy: float | None = None
    minutes: float | None = None


@dataclass(frozen=True)
class Projection:
    """A row of projection without retraining: an arm's trained model projected onto
    ``n_basis`` nodes and run with ``n_steps`` steps."""

    arm: str
    n_basis: int
    n_steps: int
    paper: str
    accuracy: float | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    source: str
    settings: dict
    arms: tuple[Arm, ...]
    projections: tuple[Projection, ...] = field(default=())

    def help_line(self) -> str:
        reported = [f"{a.name} {a.accuracy:g}%" for a in self.arms if a.accuracy is not None]
        if not reported:
            return f"{self.name}: {self.summary}"
        return f"{self.name}: {self.summary} (paper: {', '.join(reported)})"


_CIFAR = {
    "widths": (16, 32, 64),
    "norm": "batch",
    "basis": "piecewise_constant",
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "step",
    "batch_size": 128,
    "val_fraction": 0.0,
}

_CONTINUOUSNET = {
    **_CIFAR,
    "epochs": 150,
    "lr_milestones": (80, 120, 140),
    "scheme": "rk4",
    "n_basis": 8,
}


def _continuousnet_arms(cifar100: bool) -> tuple[Arm, ...]:
    if cifar100:  # no figure published for these settings: ours stand alone
        return (
            Arm("euler-8", {"scheme": "euler", "n_basis": 8}, "ResNet-equivalent 8-8-8"),
            Arm("rk4-8", {"scheme": "rk4", "n_basis": 8}, "ContinuousNet rk4 8-8-8"),
            Arm(
                "rk4-refined",
                {"scheme": "rk4", "n_basis": 1, "refine_at": (40, 50, 60)},
                "rk4 refined 1 -> 8",
            ),
        )
    return (
        Arm(
            "euler-8",
            {"scheme": "euler", "n_basis": 8},
            "ResNet 8-8-8 (0.85M) 93.11%, 105 min; ContinuousNet euler 93.11%, 83 min",
            93.11,
            83.0,
        ),
        Arm("rk4-8", {"scheme": "rk4", "n_basis": 8}, "ContinuousNet rk4 8-8-8", 93.29, 279.0),
        Arm(
            "rk4-refined",
            {"scheme": "rk4", "n_basis": 1, "refine_at": (40, 50, 60)},
            "rk4 refined 1 -> 8 (the paper lists refinements at epochs 40-80)",
            93.06,
            199.0,
        ),
        Arm("euler-2", {"scheme": "euler", "n_basis": 2}, "2-2-2 (0.27M), ~91%", 91.0),
    )


PRESETS: dict[str, Preset] = {
    "continuousnet-cifar10": Preset(
        "continuousnet-cifar10",
        "ContinuousNet on CIFAR-10, 150 epochs",
        "Queiruga et al. 2020",
        {**_CONTINUOUSNET, "data": "cifar10"},
        _continuousnet_arms(False),
    ),
    "continuousnet-cifar100": Preset(
        "continuousnet-cifar100",
        "ContinuousNet's CIFAR-10 settings on CIFAR-100 (no published figure)",
        "Queiruga et al. 2020 (settings)",
        {**_CONTINUOUSNET, "data": "cifar100"},
        _continuousnet_arms(True),
    ),
    "stateful-odenet-cifar10": Preset(
        "stateful-odenet-cifar10",
        "Stateful ODE-Net on CIFAR-10, N = K = 16, euler, 180 epochs",
        "Queiruga et al. 2021",
        {
            **_CIFAR,
            "data": "cifar10",
            "epochs": 180,
            "lr_milestones": (80, 120, 160),
            "scheme": "euler",
            "n_basis": 16,
        },
        (
            Arm("direct-16", {"n_basis": 16}, "N = K = 16", 93.69),
            Arm(
                "refined-16",
                {"n_basis": 1, "refine_at": (10, 20, 30, 40)},
                "refined 1 -> 2 -> 4 -> 8 -> 16",
                92.7,
            ),
        ),
        (
            Projection("direct-16", 8, 16, "projected to N = 8, K = 16", 92.7),
            Projection("direct-16", 8, 8, "projected to N = 8, K = 8", 92.0),
        ),
    ),
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")
    return PRESETS[name]


def scaled(settings: dict, epochs: int) -> dict:
    """``settings`` for a budget of ``epochs`` instead of theirs: the epochs of the
    learning-rate milestones and refinements scaled alike, kept in order, distinct and in
    ``1..epochs-1`` (those that no longer fit dropped, the last ones first), so that a
    short run follows the same schedule in miniature."""
    full = settings["epochs"]
    out = dict(settings, epochs=epochs)
    for key in ("lr_milestones", "refine_at"):
        if key not in settings:
            continue
        marks: list[int] = []
        for e in sorted(settings[key]):
            m = max(1, round(e * epochs / full), marks[-1] + 1 if marks else 1)
            if m < epochs:
                marks.append(m)
        out[key] = tuple(marks)
    return out
