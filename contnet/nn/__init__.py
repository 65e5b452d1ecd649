"""Time-dependent layers and residual units: modules called as ``layer(t, x)`` whose
parameters are basis expansions in depth; the Unit protocol a block integrates; the
refinement and projection of a module tree.

- :class:`TimeConv2d`, :class:`TimeBatchNorm2d`, :class:`TimeScalar` (LM-ResNet's
  ``k(t)``), on :class:`TimeDependent` (exact refinement, L2 projection);
- :class:`ConvUnit`, the residual unit ``R(t, x)``, which satisfies :class:`Unit` (and
  :class:`SplitUnit`: its tail may be fused);
- :func:`project`, :func:`refine_bases`, :func:`map_bases`.
"""

from .checks import check_state
from .conv import TimeConv2d
from .dispatch import dispatch_free
from .norm import TimeBatchNorm2d, frozen_batch_stats
from .protocol import PassSplitUnit, SplitUnit, Unit, conforms
from .refine import map_bases, project, refine_bases
from .time_dependent import TimeDependent, TimeScalar, interpolate, node_layout_like
from .units import ACTIVATIONS, NORMS, ConvUnit, reads_weights_ahead

__all__ = [
    "TimeDependent",
    "TimeConv2d",
    "TimeBatchNorm2d",
    "TimeScalar",
    "ConvUnit",
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
    "dispatch_free",
    "interpolate",
    "node_layout_like",
    "check_state",
]
