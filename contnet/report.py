"""Presenting results, for the commands, the plots and the benchmarks alike: plain-text
tables with right-aligned columns, JSON files, and matplotlib figures drawn without a
display and saved at one resolution."""

from __future__ import annotations

import json
import pathlib

__all__ = ["format_table", "write_json", "pyplot", "save_figure"]


def format_table(rows, header) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join(
        [line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]]
    )


def write_json(path, payload) -> pathlib.Path:
    """``payload`` as indented JSON at ``path`` (folders made; other objects as ``str``)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("plots need matplotlib: pip install 'contnet[cli]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> pathlib.Path:
    """Save ``fig`` as ``path`` (110 dpi; folders made) and close it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
