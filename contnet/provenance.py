"""Where a published result comes from: the command that made it, the checkout's commit,
the versions, the thread count, the device and the date, recorded in every result file
(benchmarks, the study, the demo) so that a figure can be traced and regenerated."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import shlex
import subprocess
import sys

import torch

from . import ops
from .version import __version__

__all__ = ["CHECKOUT", "command_line", "device_name", "git_commit", "provenance"]

# the checkout this package lies in, if it does
CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """The checkout's commit (``+dirty`` if contnet/, csrc/ or bench/ differ from it, the
    results folder apart); outside a git checkout, ``CONTNET_COMMIT`` if set, else
    ``unknown``."""
    fallback = os.environ.get("CONTNET_COMMIT", "unknown")

    def git(*args):
        r = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        sha = git("rev-parse", "--verify", "HEAD")
        if not sha:
            return fallback
        dirty = git("status", "--porcelain", "--", "contnet", "csrc", "bench", ":!bench/results")
        return sha + ("+dirty" if dirty else "")
    except OSError:
        return fallback


def command_line(argv=None) -> str:
    """The command that is running, as one would type it: ``contnet ...`` for the command
    line (however it was started), else the Python command."""
    argv = list(sys.argv if argv is None else argv)
    head = pathlib.Path(argv[0]).name if argv else ""
    if head in ("contnet", "__main__.py") and argv:
        argv[0] = "contnet"
    elif head:
        argv = ["python", *argv]
    return shlex.join(argv)


def provenance(device: str = "cpu", command: str | None = None) -> dict:
    """The record of a result: ``command``, ``commit``, ``date``, the versions (``python``,
    ``torch``, ``cuda``, ``contnet``), ``backend``, ``threads``, ``device`` and
    ``device_name``."""
    return {
        "command": command_line() if command is None else command,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "contnet": __version__,
        "backend": ops.backend(),
    }
