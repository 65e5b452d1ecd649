"""The main job as a library: configuration, data, the training loop with refinement in
depth, checkpoints, data parallel training."""

from ..report import OutputError
from .checkpoint import (
    CheckpointError,
    check_finite,
    load_checkpoint,
    load_model_state,
    model_from_checkpoint,
    model_state,
    save_checkpoint,
)
from .config import TrainConfig, build_model, make_optimizer, make_scheduler
from .data import Dataset, Loader, load
from .distributed import Distributed, StalledError
from .loop import DivergenceError, count_parameters, evaluate, train

__all__ = [
    "TrainConfig",
    "train",
    "DivergenceError",
    "OutputError",
    "evaluate",
    "build_model",
    "make_optimizer",
    "make_scheduler",
    "count_parameters",
    "Dataset",
    "Loader",
    "load",
    "Distributed",
    "StalledError",
    "CheckpointError",
    "check_finite",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "load_model_state",
    "model_state",
]
