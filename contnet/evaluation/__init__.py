"""A trained model evaluated: its manifestations (schemes x step counts, drift, order; and
to tolerances, batch-shared and per input),
its accuracy on corrupted images, compression into cheaper ones, and plots."""

from .adaptive_depth import RTOLS, adaptive_table, fixed_evaluations
from .candidates import named_blocks
from .compression import accuracy, apply_manifestation, compress, measure_latency, metric_on
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_table
from .corruptions import VERSION as CORRUPTION_VERSION
from .manifestation import (
    fitted_order,
    manifestation_drift,
    manifestation_table,
    predict,
    schemes_to_try,
    set_manifestation,
)

__all__ = [
    "RTOLS",
    "adaptive_table",
    "fixed_evaluations",
    "CORRUPTIONS",
    "SEVERITIES",
    "CORRUPTION_VERSION",
    "corrupt",
    "corruption_table",
    "compress",
    "apply_manifestation",
    "named_blocks",
    "accuracy",
    "metric_on",
    "measure_latency",
    "manifestation_table",
    "manifestation_drift",
    "fitted_order",
    "predict",
    "schemes_to_try",
    "set_manifestation",
]
