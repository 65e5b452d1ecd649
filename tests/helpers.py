"""Helpers shared by the tests."""

import pytest
import torch
from torch import nn

from contnet import TimeBatchNorm2d, ops

#: property-based cases run per target (printed at the end of the run by conftest)
CASES: dict = {}


def count_case(target: str) -> None:
    CASES[target] = CASES.get(target, 0) + 1


def devices():
    """CPU always; CUDA as a parameter marked `cuda` (skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _autocast_error(model, x, dtype):
    """|y_autocast - y_float64| / |y_float64| for the model as it stands."""
    with torch.no_grad():
        ref = model.double()(x.double())
        model.float()
        with torch.autocast(x.device.type, dtype=dtype):
            out = model(x)
    return ((out.double() - ref).norm() / ref.norm()).item()


def autocast_errors(model, x, dtype):
    """The autocast error of ``model`` with the fused ops and with eager PyTorch ops."""
    fused = _autocast_error(model, x, dtype)
    with ops.use_reference():
        eager = _autocast_error(model, x, dtype)
    return fused, eager


def randomise_norms(module):
    """Random affine parameters and running statistics in every norm (nothing trivial)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (TimeBatchNorm2d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
