"""Command line of contnet: ``contnet <command>`` or ``python -m contnet <command>``.

Commands: ``train`` (with refinement in depth), ``eval`` (the manifestation table),
``compress`` (fewer basis nodes / steps within an accuracy budget, chosen on a validation
split), ``demo`` (all of it on the digits data, as ``make demo`` runs it), ``bench`` (the
microbenchmarks). Each prints a summary table and writes JSON (and PNG plots) to its
output folder.
"""

from ..report import format_table
from .parser import build_parser, main

__all__ = ["main", "build_parser", "format_table"]
