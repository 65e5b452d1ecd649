"""Time-stepping schemes: explicit Runge-Kutta tableaux (embedded pairs among them) and
linear multistep methods; the times at which fixed steps evaluate the rate.

Pure data and arithmetic; nothing here knows about ``nn.Module``. Tableau entries are
held as exact fractions so that validation (structure and order conditions) is exact and
stage times land exactly on basis cell edges when they should.

- :mod:`.tableau`: the kinds of scheme and the order conditions;
- :mod:`.catalog`: the named schemes (:func:`get`, :func:`names`);
- :mod:`.times`: step and stage times (the open-interval rule), step counts, intervals.
"""

from .catalog import PAIRS, get, name_of, names
from .tableau import (
    AdamsBashforth2,
    ButcherTableau,
    LMResNet,
    Multistep,
    order_residuals,
    rooted_trees,
)
from .times import check_interval, check_n_steps, fitted_order, stage_times, step_times

__all__ = [
    "ButcherTableau",
    "Multistep",
    "AdamsBashforth2",
    "LMResNet",
    "PAIRS",
    "get",
    "names",
    "name_of",
    "order_residuals",
    "rooted_trees",
    "stage_times",
    "step_times",
    "check_n_steps",
    "check_interval",
    "fitted_order",
]
