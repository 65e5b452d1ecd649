import pytest
import torch
import torch.nn.functional as F

import contnet
from contnet import basis


@pytest.mark.parametrize(
    "family,K",
    [("piecewise_constant", 3), ("fem_linear", 4), ("piecewise_linear", 4), ("legendre", 3)],
)
def test_time_conv_matches_conv_with_interpolated_weight(family, K):
    conv = contnet.TimeConv2d(3, 5, 3, n_basis=K, basis=family).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    b = basis.get(family, K)
    for t in torch.rand(5).tolist() + [0.0, 1.0]:
        phi = b([t])[0]
        w = torch.einsum("k,k...->...", phi, conv.weight)
        bias = phi @ conv.bias
        torch.testing.assert_close(conv(t, x), F.conv2d(x, w, bias, padding=1))


def test_piecewise_constant_lookup_is_a_view():
    conv = contnet.TimeConv2d(2, 2, 3, n_basis=4)
    w, b = conv.weight_at(0.6)
    assert w.data_ptr() == conv.weight[2].data_ptr() and b.data_ptr() == conv.bias[2].data_ptr()


def test_nodes_are_initialised_independently():
    conv = contnet.TimeConv2d(4, 4, 3, n_basis=3)
    assert not torch.equal(conv.weight[0], conv.weight[1])
    assert conv.weight.abs().max() <= 1 / (4 * 9) ** 0.5 + 1e-6


def test_batch_norm_cells():
    bn = contnet.TimeBatchNorm2d(3, 2).double()
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64) * 2 + 1
    bn.train()
    bn(0.7, x)
    assert torch.equal(bn.running_mean[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(bn.running_mean[1], 0.1 * x.mean((0, 2, 3)))
    bn.eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    expect = F.batch_norm(
        x, bn.running_mean[1], bn.running_var[1], bn.weight[1], bn.bias[1], False, 0.1, bn.eps
    )
    torch.testing.assert_close(bn(0.99, x), expect)


@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("norm", [None, "batch"])
def test_conv_unit_shapes(preact, norm):
    unit = contnet.ConvUnit(
        6, hidden=10, n_basis=2, preact=preact, norm=norm, act="tanh", scale=0.5
    )
    x = torch.randn(2, 6, 5, 5)
    assert unit(0.3, x).shape == x.shape
    assert unit.conv1.weight.shape == (2, 10, 6, 3, 3)
    assert (unit.conv1.bias is None) == (norm is not None)


@pytest.mark.parametrize("padding", ["same", "valid", 2, (1, 0)])
def test_time_conv_padding_as_conv2d_takes_it(padding):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    conv = contnet.TimeConv2d(3, 4, (3, 5), n_basis=2, padding=padding).double()
    ref = torch.nn.functional.conv2d(x, conv.weight[1], conv.bias[1], padding=padding)
    torch.testing.assert_close(conv(0.75, x), ref, rtol=1e-12, atol=1e-12)


def test_errors_name_the_argument():
    with pytest.raises(
        ValueError, match=r"padding='same' with an even kernel_size needs padding_mode='zeros'"
    ):
        contnet.TimeConv2d(3, 4, 4, padding="same", padding_mode="reflect")
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1"):
        contnet.TimeConv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be an int, 2 ints, 'same' or 'valid'"):
        contnet.TimeConv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="padding must be one or 2 non-negative ints"):
        contnet.TimeConv2d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="padding must be one or 2 non-negative ints"):
        contnet.TimeConv2d(3, 4, 3, padding=(1,))
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        contnet.TimeConv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        contnet.TimeConv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        contnet.ConvUnit(4, kernel_size=4)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4, H, W\) for channels=4"):
        contnet.ConvUnit(4)(0.0, torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="in_channels=3"):
        contnet.TimeConv2d(3, 4, 3)(0.0, torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="unknown act 'swish2'"):
        contnet.ConvUnit(4, act="swish2")
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        contnet.ConvUnit(4, norm="layer")
    with pytest.raises(ValueError, match="unknown basis 'spline'"):
        contnet.ConvUnit(4, basis="spline")
    with pytest.raises(ValueError, match="fem_linear' must be >= 2"):
        contnet.ConvUnit(4, basis="fem_linear", n_basis=1)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        contnet.ConvUnit(0)
    assert contnet.ConvUnit(4, scale=torch.tensor(0.5)).scale == 0.5  # a one-element tensor
    with pytest.raises(TypeError, match="scale must be a real number, got str"):
        contnet.ConvUnit(4, scale="a")
    with pytest.raises(ValueError, match="scale must be finite, got inf"):
        contnet.ConvUnit(4, scale=float("inf"))
    with pytest.raises(ValueError, match="momentum must be a number in \\[0, 1\\]; None"):
        contnet.TimeBatchNorm2d(4, momentum=None)
    with pytest.raises(ValueError, match="momentum must be a number in \\[0, 1\\], got 1.5"):
        contnet.TimeBatchNorm2d(4, momentum=1.5)
    with pytest.raises(ValueError, match="eps must be > 0, got 0.0"):
        contnet.TimeBatchNorm2d(4, eps=0.0)
    with pytest.raises(TypeError, match="t must be a Python float"):
        contnet.TimeConv2d(3, 4, 3)(torch.tensor(0.5), torch.randn(1, 3, 5, 5))
