"""A trained model evaluated: its manifestations (schemes x step counts, drift, order),
compression into cheaper ones, and plots."""

from .compression import accuracy, compress, measure_latency, metric_on
from .manifestation import (
    fitted_order,
    manifestation_drift,
    manifestation_table,
    predict,
    schemes_to_try,
    set_manifestation,
)

__all__ = [
    "compress",
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
