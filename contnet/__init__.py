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
    ContinuousTransformer,
    GraphedInference,
    Stitch,
    cuda_graph,
    from_branches,
    from_resnet,
    project,
    refine,
)
from .nn import (
    BottleneckUnit,
    ConvUnit,
    MLPUnit,
    TimeBatchNorm2d,
    TimeConv2d,
    TransformerUnit,
    time_dependent,
)
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
    "BottleneckUnit",
    "MLPUnit",
    "TransformerUnit",
    "time_dependent",
    "ContinuousBlock",
    "ContinuousNet",
    "ContinuousTransformer",
    "Stitch",
    "refine",
    "project",
    "from_resnet",
    "from_branches",
    "cuda_graph",
    "GraphedInference",
]
