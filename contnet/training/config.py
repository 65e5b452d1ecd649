"""The main job's configuration (``TrainConfig``: everything a run depends on, saved in
every checkpoint) and the model, optimizer and schedule it builds."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import basis as basis_lib
from .. import schemes as schemes_lib
from ..models import ContinuousNet


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint)."""

    data: str = "digits"
    data_dir: str | None = None
    widths: tuple[int, ...] = (16, 32, 64)
    basis: str = "piecewise_constant"
    n_basis: int = 1
    scheme: str = "rk4"
    n_steps: int | None = None
    act: str = "relu"
    norm: str | None = "batch"
    preact: bool = True
    backprop: str = "direct"
    epochs: int = 18
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    refine_at: tuple[int, ...] = ()
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.refine_at = tuple(sorted(int(e) for e in self.refine_at))
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.refine_at and self.epochs < 2:
            raise ValueError(
                f"refine_at needs epochs >= 2 (a refinement starts an epoch after the first), "
                f"got epochs={self.epochs} and refine_at={list(self.refine_at)}"
            )
        if any(e <= 0 or e >= self.epochs for e in self.refine_at):
            raise ValueError(
                f"refine_at epochs must lie in 1..{self.epochs - 1}, got {list(self.refine_at)}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v}")
        if not (math.isfinite(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; expected one of {list(SCHEDULES)}"
            )
        basis_lib.get(self.basis, self.n_basis)  # validates the pair
        schemes_lib.get(self.scheme)

    def model_kwargs(self, in_channels: int, num_classes: int) -> dict:
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "widths": list(self.widths),
            "n_basis": self.n_basis,
            "basis": self.basis,
            "scheme": self.scheme,
            "n_steps": self.n_steps,
            "act": self.act,
            "norm": self.norm,
            "preact": self.preact,
            "backprop": self.backprop,
        }

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"], d["refine_at"] = list(self.widths), list(self.refine_at)
        return d


SCHEDULES = ("cosine", "step", "constant")


# what a resumed run must share with the saved one (all but where the data lie, the device,
# progress bars and free-form notes): the rest decides the weights' trajectory
RESUME_KEYS = tuple(
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name not in ("data_dir", "device", "progress", "extra")
)


# what a resumed run reads for a setting an older checkpoint does not record
LEGACY = {"val_fraction": 0.0}


def build_model(kwargs: dict) -> ContinuousNet:
    return ContinuousNet.from_config(kwargs)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    if cfg.schedule == "step":
        marks = [max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(opt, marks, 0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
