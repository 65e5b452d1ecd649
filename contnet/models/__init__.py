"""Networks built from continuous blocks (``ContinuousNet``, ``Stitch``), the refinement
and projection of any module tree, the conversion of a pre-activation residual stage
(``from_resnet``) and CUDA-graph inference (``cuda_graph``)."""

from .continuous_net import ContinuousNet, Stitch
from .convert import from_resnet
from .cuda_graph import GraphedInference, cuda_graph
from .refine import project, refine

__all__ = [
    "ContinuousNet",
    "Stitch",
    "refine",
    "project",
    "from_resnet",
    "cuda_graph",
    "GraphedInference",
]
