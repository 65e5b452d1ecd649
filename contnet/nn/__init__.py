"""Time-dependent layers and residual units: modules called as ``layer(t, x)`` whose
parameters are basis expansions in depth; the Unit protocol a block integrates; the
refinement and projection of a module tree.

- layers on :class:`TimeDependent` (exact refinement, L2 projection):
  :class:`TimeLinear`, :class:`TimeConv1d`, :class:`TimeConv2d`, :class:`TimeConv3d`,
  :class:`TimeLayerNorm`, :class:`TimeGroupNorm`, :class:`TimeBatchNorm1d`,
  :class:`TimeBatchNorm2d`, :class:`TimeBatchNorm3d`, :class:`TimeScalar` (LM-ResNet's
  ``k(t)``); and :func:`time_dependent`, any module made time-dependent;
- the residual units ``R(t, x)``, which satisfy :class:`Unit`: :class:`ConvUnit`,
  :class:`BottleneckUnit`, :class:`MLPUnit`, :class:`TransformerUnit`;
- :func:`project`, :func:`refine_bases`, :func:`map_bases`.
"""

from .bottleneck import BottleneckUnit
from .checks import check_state
from .conv import TimeConv1d, TimeConv2d, TimeConv3d, TimeConvNd
from .dispatch import dispatch_free
from .linear import TimeLinear
from .norm import (
    TimeBatchNorm,
    TimeBatchNorm1d,
    TimeBatchNorm2d,
    TimeBatchNorm3d,
    TimeGroupNorm,
    TimeLayerNorm,
    frozen_batch_stats,
    recompute_hazards,
)
from .protocol import PassSplitUnit, SplitUnit, Unit, conforms
from .refine import map_bases, project, refine_bases
from .time_dependent import (
    TimeDependent,
    TimeScalar,
    filters_like,
    interpolate,
    node_layout_like,
)
from .time_module import TimeModule, time_dependent
from .transformer import MLPUnit, TransformerUnit
from .units import ACTIVATIONS, NORMS, ConvUnit, TimeUnit, reads_weights_ahead

__all__ = [
    "TimeDependent",
    "TimeLinear",
    "TimeConvNd",
    "TimeConv1d",
    "TimeConv2d",
    "TimeConv3d",
    "TimeBatchNorm",
    "TimeBatchNorm1d",
    "TimeBatchNorm2d",
    "TimeBatchNorm3d",
    "TimeLayerNorm",
    "TimeGroupNorm",
    "TimeScalar",
    "TimeModule",
    "time_dependent",
    "TimeUnit",
    "ConvUnit",
    "BottleneckUnit",
    "MLPUnit",
    "TransformerUnit",
    "Unit",
    "SplitUnit",
    "PassSplitUnit",
    "conforms",
    "ACTIVATIONS",
    "NORMS",
    "project",
    "refine_bases",
    "map_bases",
    "frozen_batch_stats",
    "reads_weights_ahead",
    "recompute_hazards",
    "dispatch_free",
    "interpolate",
    "node_layout_like",
    "filters_like",
    "check_state",
]
