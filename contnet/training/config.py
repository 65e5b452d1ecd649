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
from ..integrate import BACKPROP_MODES
from ..models import NETWORKS
from ..nn import ACTIVATIONS, NORMS

SCHEDULES = ("cosine", "step", "constant")
MODELS = ("convnet", "transformer")
OPTIMIZERS = ("sgd", "adamw")


def option(group: str, help: str, kind: str | None = None, choices=None, depth: bool = False):
    """A field's command-line option (the parser generates ``--name`` from it): its
    ``group`` and ``help``; ``kind``, what values it takes (``positive_int``,
    ``positive_ints``, ``ints``, ``float``, ``fraction``, ``int``, ``device``,
    ``no_flag`` for a switch that turns the field off; else a string); ``choices``;
    ``depth``, whether it is one of the depth options the demo sets itself."""
    return {"cli": {"group": group, "help": help, "kind": kind, "choices": choices, "depth": depth}}


def _increasing(name: str, epochs) -> tuple[int, ...]:
    """Epochs given in increasing order, each once (a repeat or a wrong order is a typo that
    would otherwise refine once less or at another time than asked)."""
    out = tuple(int(e) for e in epochs)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{name} must be increasing epochs, each once, got {list(out)}")
    return out


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint). The fields with
    an :func:`option` are the options of ``contnet train``."""

    data: str = "digits"
    data_dir: str | None = None
    model: str = field(
        default="convnet",
        metadata=option(
            "model",
            "network: convnet (ContinuousNet) or transformer (ContinuousTransformer on "
            "image patches)",
            choices=MODELS,
        ),
    )
    widths: tuple[int, ...] = field(
        default=(16, 32, 64),
        metadata=option("model", "convnet: channels of each stage", "positive_ints"),
    )
    dim: int = field(
        default=64, metadata=option("model", "transformer: token features", "positive_int")
    )
    heads: int = field(
        default=4, metadata=option("model", "transformer: attention heads", "positive_int")
    )
    mlp_ratio: float = field(
        default=2.0, metadata=option("model", "transformer: MLP hidden features / dim", "float")
    )
    patch_size: int = field(
        default=2, metadata=option("model", "transformer: image patch side", "positive_int")
    )
    stages: int = field(
        default=1,
        metadata=option("model", "transformer: continuous encoder stages", "positive_int"),
    )
    basis: str = field(
        default="piecewise_constant",
        metadata=option(
            "model", "basis of the weights in depth", choices=basis_lib.FAMILIES, depth=True
        ),
    )
    n_basis: int = field(
        default=1,
        metadata=option("model", "basis nodes K at the start", "positive_int", depth=True),
    )
    scheme: str = field(
        default="rk4",
        metadata=option("model", "training scheme", choices=schemes_lib.names(), depth=True),
    )
    n_steps: int | None = field(
        default=None,
        metadata=option(
            "model",
            "steps per block (default: K, doubled with K on refinement)",
            "positive_int",
            depth=True,
        ),
    )
    act: str = field(
        default="relu", metadata=option("model", "convnet: activation", choices=tuple(ACTIVATIONS))
    )
    norm: str | None = field(
        default="batch", metadata=option("model", "convnet: normalisation", choices=NORMS)
    )
    preact: bool = True
    backprop: str = field(
        default="direct",
        metadata=option("model", "how gradients flow through the blocks", choices=BACKPROP_MODES),
    )
    stochastic_depth: float = field(
        default=0.0,
        metadata=option(
            "model",
            "stochastic depth: in training, each step's update dropped with probability "
            "p t (t: the step's depth in [0, 1)), kept ones rescaled; LM-ResNet drops its "
            "rate term only",
            "fraction",
        ),
    )
    optimizer: str = field(
        default="sgd",
        metadata=option(
            "optimisation",
            "sgd (Nesterov momentum) or adamw (momentum is beta1)",
            choices=OPTIMIZERS,
        ),
    )
    epochs: int = field(default=18, metadata=option("optimisation", "epochs", "positive_int"))
    batch_size: int = field(
        default=64, metadata=option("optimisation", "batch size", "positive_int")
    )
    lr: float = field(default=0.1, metadata=option("optimisation", "learning rate", "float"))
    momentum: float = field(
        default=0.9,
        metadata=option("optimisation", "SGD (Nesterov) momentum, AdamW beta1", "float"),
    )
    weight_decay: float = field(
        default=5e-4, metadata=option("optimisation", "weight decay", "float")
    )
    schedule: str = field(
        default="cosine",
        metadata=option("optimisation", "learning-rate schedule", choices=SCHEDULES),
    )
    lr_milestones: tuple[int, ...] = field(
        default=(),
        metadata=option(
            "optimisation",
            "with --schedule step: epochs at which the learning rate is multiplied by 0.1 "
            "(default: at 1/2 and 3/4 of the epochs)",
            "ints",
        ),
    )
    refine_at: tuple[int, ...] = field(
        default=(),
        metadata=option(
            "optimisation",
            "epochs (0-based starts) at which K and n_steps double, e.g. --refine-at 6 12",
            "ints",
            depth=True,
        ),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=option(
            "optimisation",
            "training images held out for validation, per class; compress chooses on them",
            "fraction",
        ),
    )
    seed: int = field(default=0, metadata=option("run", "random seed", "int"))
    device: str = field(default="cpu", metadata=option("run", "cpu or cuda", "device"))
    progress: bool = field(default=True, metadata=option("run", "no progress bars", "no_flag"))
    dist_timeout: float = field(
        default=600.0,
        metadata=option(
            "run",
            "data parallel: seconds a process waits for the others (a stalled or killed "
            "one) before the run stops with a message",
            "float",
        ),
    )
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.refine_at = _increasing("refine_at", self.refine_at)
        self.lr_milestones = _increasing("lr_milestones", self.lr_milestones)
        if any(e <= 0 or e >= self.epochs for e in self.lr_milestones):
            raise ValueError(
                f"lr_milestones must lie in 1..{self.epochs - 1}, got {list(self.lr_milestones)}"
            )
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
        if not (math.isfinite(self.dist_timeout) and self.dist_timeout > 0):
            raise ValueError(
                f"dist_timeout must be a number of seconds > 0, got {self.dist_timeout}"
            )
        if not (math.isfinite(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.backprop not in BACKPROP_MODES:
            raise ValueError(
                f"unknown backprop {self.backprop!r}; expected one of {list(BACKPROP_MODES)}"
            )
        if self.backprop == "adjoint" and not isinstance(
            schemes_lib.get(self.scheme), schemes_lib.ButcherTableau
        ):
            raise ValueError(
                f"backprop 'adjoint' needs a Runge-Kutta scheme (it steps back), got scheme "
                f"{self.scheme!r}: use backprop 'checkpoint'"
            )
        for name, choices in (("model", MODELS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; expected one of {list(choices)}"
                )
        if self.model == "transformer" and self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio}")
        if self.optimizer == "adamw" and self.momentum >= 1:
            raise ValueError(f"momentum (AdamW's beta1) must be < 1, got {self.momentum}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; expected one of {list(SCHEDULES)}"
            )
        basis_lib.get(self.basis, self.n_basis)  # validates the pair
        schemes_lib.get(self.scheme)

    def network(self) -> str:
        """The class name of the network (a key of :data:`contnet.models.NETWORKS`)."""
        return {"convnet": "ContinuousNet", "transformer": "ContinuousTransformer"}[self.model]

    def model_kwargs(self, in_channels: int, num_classes: int, image_size=None) -> dict:
        """The network's constructor arguments for data of ``in_channels`` channels,
        ``num_classes`` classes and images of ``image_size`` (the transformer's)."""
        depth = {"n_basis": self.n_basis, "basis": self.basis, "scheme": self.scheme}
        depth.update(
            n_steps=self.n_steps, backprop=self.backprop, stochastic_depth=self.stochastic_depth
        )
        common = {"in_channels": in_channels, "num_classes": num_classes}
        if self.model == "transformer":
            if image_size is None:
                raise ValueError("image_size is required for the transformer")
            return {
                **common,
                "image_size": list(image_size),
                "patch_size": self.patch_size,
                "dim": self.dim,
                "heads": self.heads,
                "mlp_ratio": self.mlp_ratio,
                "stages": self.stages,
                **depth,
            }
        return {
            **common,
            "widths": list(self.widths),
            **depth,
            "act": self.act,
            "norm": self.norm,
            "preact": self.preact,
        }

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"], d["refine_at"] = list(self.widths), list(self.refine_at)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


# what a resumed run must share with the saved one (all but where the data lie, the device,
# progress bars, how long processes wait for each other and free-form notes): the rest
# decides the weights' trajectory
RESUME_KEYS = tuple(
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name not in ("data_dir", "device", "progress", "dist_timeout", "extra")
)


# what a resumed run reads for a setting an older checkpoint does not record: the value
# that every run before the setting existed had
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
LEGACY = {
    "val_fraction": 0.0,
    **{k: _DEFAULTS[k] for k in ("model", "dim", "heads", "mlp_ratio", "patch_size", "stages")},
    "optimizer": "sgd",
    "lr_milestones": [],
    "stochastic_depth": 0.0,
}


def build_model(kwargs: dict, network: str = "ContinuousNet") -> nn.Module:
    """The network ``network`` (a class name of :data:`contnet.models.NETWORKS`) built from
    its constructor arguments."""
    return NETWORKS[network].from_config(kwargs)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(),
            lr=cfg.lr,
            betas=(cfg.momentum, 0.999),
            weight_decay=cfg.weight_decay,
        )
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
        marks = list(cfg.lr_milestones) or [max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(opt, marks, 0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
