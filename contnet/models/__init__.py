"""Networks built from continuous blocks (``ContinuousNet``, ``Stitch``,
``ContinuousTransformer``), the refinement and projection of any module tree, the
conversion of a pre-activation residual stage (``from_resnet``) and of any stage of
residual branches of one structure (``from_branches``) and CUDA-graph inference
(``cuda_graph``)."""

from .branches import from_branches
from .continuous_net import ContinuousNet, Stitch
from .convert import from_resnet
from .cuda_graph import GraphedInference, cuda_graph
from .refine import BasisChange, project, refine
from .transformer import ContinuousTransformer

#: the networks a checkpoint can rebuild from their ``config`` (by class name)
NETWORKS = {cls.__name__: cls for cls in (ContinuousNet, ContinuousTransformer)}

__all__ = [
    "ContinuousNet",
    "ContinuousTransformer",
    "NETWORKS",
    "Stitch",
    "refine",
    "project",
    "BasisChange",
    "from_resnet",
    "from_branches",
    "cuda_graph",
    "GraphedInference",
]
