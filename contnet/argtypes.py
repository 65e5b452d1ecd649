"""argparse types that name what they expect (argparse names the option in its error),
shared by the command line and the benchmarks."""

from __future__ import annotations

import argparse
import math
import re

import torch

__all__ = [
    "positive_int",
    "nonnegative_int",
    "finite_float",
    "positive_float",
    "nonnegative_float",
    "fraction",
    "device",
    "file_tag",
]


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    """An int >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    return _int_at_least(text, 0)


def finite_float(text: str) -> float:
    """A finite float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """A finite float > 0."""
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    v = finite_float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return v


def device(text: str) -> str:
    """A torch device this machine has (cpu, cuda, cuda:1, ...)."""
    try:
        dev = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(f"not a device: {e}") from None
    if dev.type != "cpu":
        module = getattr(torch, dev.type, None)
        available = module is not None and getattr(module, "is_available", lambda: False)()
        if not available:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no {dev.type} device")
        if dev.index is not None and dev.index >= module.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {module.device_count()} {dev.type} device(s)"
            )
    return text


def file_tag(text: str) -> str:
    """A part of a file name: letters, digits, '.', '_' and '-' (no folder, no '..')."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", text) or text.strip(".") == "" or ".." in text:
        raise argparse.ArgumentTypeError(
            f"must be letters, digits, '.', '_' or '-' (a part of a file name), got {text!r}"
        )
    return text
