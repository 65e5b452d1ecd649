"""Integration in depth: ``odeint`` and what it is built from -- the stage arithmetic of a
Runge-Kutta step (``rk``), the step of each kind of scheme and the one stepping loop
(``steppers``), the memory-saving backprop modes (``backprop``), adaptive steps to a
tolerance (``adaptive``)."""

from .adaptive import Controller
from .odeint import BACKPROP_MODES, fixed_stats, odeint, rate_times
from .rk import check_rate, rk_step, split_of

__all__ = [
    "Controller",
    "fixed_stats",
    "odeint",
    "rate_times",
    "BACKPROP_MODES",
    "rk_step",
    "check_rate",
    "split_of",
]
