"""Helpers shared by the tests."""

import pytest


def devices():
    """CPU always; CUDA as a parameter marked `cuda` (skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
