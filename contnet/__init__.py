"""contnet: continuous-in-depth neural networks (ContinuousNet) for PyTorch.

A residual stage becomes the flow of ``dx/dt = R(theta(t), x)`` on ``t in [0, 1]`` with
weights ``theta(t)`` expanded in a basis in depth, integrated by a Runge-Kutta or linear
multistep scheme. See the README for the public API.
"""

from . import basis, evaluation, integrate, models, nn, ops, schemes, training
from .block import ContinuousBlock
from .integrate import odeint
from .models import (
    ContinuousNet,
    GraphedInference,
    Stitch,
    cuda_graph,
    from_resnet,
    project,
    refine,
)
from .nn import ConvUnit, TimeBatchNorm2d, TimeConv2d
from .version import __version__  # noqa: F401  (contnet.__version__)

__all__ = [
    "basis",
    "schemes",
    "ops",
    "nn",
    "integrate",
    "models",
    "training",
    "evaluation",
    "odeint",
    "TimeConv2d",
    "TimeBatchNorm2d",
    "ConvUnit",
    "ContinuousBlock",
    "ContinuousNet",
    "Stitch",
    "refine",
    "project",
    "from_resnet",
    "cuda_graph",
    "GraphedInference",
]
