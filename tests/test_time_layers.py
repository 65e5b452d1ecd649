"""The time-dependent layers of contnet.nn, one by one: they initialise and compute like
their torch.nn counterparts at every node, refine exactly, project exactly onto the target
space, have correct gradients, keep their state and name bad arguments."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contnet import nn as cnn

from .cases import LAYERS, randomise, state

BASES = [("piecewise_constant", 2), ("fem_linear", 3), ("piecewise_linear", 4), ("legendre", 3)]
TIMES = [0.0, 0.2, 0.5, 0.71, 1.0]


def _is_bn(name):
    return name.startswith("TimeBatchNorm")


def _layer(name, K, basis, seed=0):
    build, shape = LAYERS[name]
    return randomise(build(K, basis).double(), seed), shape


# torch.nn counterpart of each layer, and how to give it node k's values
TORCH = {
    "TimeLinear": lambda: nn.Linear(4, 4),
    "TimeConv1d": lambda: nn.Conv1d(3, 3, 3, padding=1),
    "TimeConv2d": lambda: nn.Conv2d(3, 3, 3, padding=1),
    "TimeConv3d": lambda: nn.Conv3d(2, 2, 3, padding=1),
    "TimeLayerNorm": lambda: nn.LayerNorm(4),
    "TimeGroupNorm": lambda: nn.GroupNorm(2, 4),
    "TimeBatchNorm1d": lambda: nn.BatchNorm1d(3),
    "TimeBatchNorm2d": lambda: nn.BatchNorm2d(3),
    "TimeBatchNorm3d": lambda: nn.BatchNorm3d(2),
}


def _node(layer, torch_layer, k):
    """``torch_layer`` with ``layer``'s values at node ``k`` (a nodal basis)."""
    with torch.no_grad():
        for name, value in list(torch_layer.named_parameters()) + list(torch_layer.named_buffers()):
            if name != "num_batches_tracked":
                value.copy_(getattr(layer, name)[k])
    return torch_layer


@pytest.mark.parametrize("name", list(LAYERS))
def test_one_node_initialises_as_torch_does(name):
    torch.manual_seed(7)
    ref = TORCH[name]()
    torch.manual_seed(7)
    layer = LAYERS[name][0](1, "piecewise_constant")
    for pname, p in ref.named_parameters():
        torch.testing.assert_close(getattr(layer, pname)[0], p, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_node_computes_what_torch_computes(name):
    K = 3
    layer, shape = _layer(name, K, "piecewise_constant")
    x = state(shape)
    for train in (False, True):
        for k in range(K):
            ref = _node(layer, TORCH[name]().double(), k).train(train)
            t = (k + 0.5) / K
            torch.testing.assert_close(layer.train(train)(t, x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in LAYERS if not _is_bn(n)])
def test_nodes_start_as_torch_initialises_them(name):
    # legendre: the stacks hold coefficients; the values at the nodes are what is drawn
    torch.manual_seed(3)
    layer = LAYERS[name][0](4, "legendre").double()
    at_nodes = layer.basis(layer.basis.nodes()) @ layer.weight.detach().flatten(1)
    if name.startswith(("TimeLayer", "TimeGroup")):
        torch.testing.assert_close(at_nodes, torch.ones_like(at_nodes), rtol=0, atol=1e-12)
        return
    bound = 1.0 / layer.weight[0, 0].numel() ** 0.5  # kaiming_uniform_(a=sqrt(5))
    assert at_nodes.abs().max() <= bound * (1 + 1e-9)
    assert at_nodes.abs().max() > 0.5 * bound
    assert (at_nodes[0] - at_nodes[1]).abs().max() > 0  # nodes drawn independently


@pytest.mark.parametrize("basis,K", BASES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_refinement_leaves_the_output_unchanged(name, basis, K):
    layer, shape = _layer(name, K, basis)
    layer.eval()
    x = state(shape)
    before = [layer(t, x) for t in TIMES]
    for _ in range(2):
        cnn.refine_bases(layer)
    assert layer.n_basis > K
    for t, b in zip(TIMES, before):
        torch.testing.assert_close(layer(t, x), b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("basis,K", BASES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_projection_is_exact_on_the_target_space(name, basis, K):
    coarse, shape = _layer(name, K, basis)
    fine = copy.deepcopy(coarse)
    cnn.refine_bases(fine)
    cnn.refine_bases(fine)  # theta(t) lies in the coarse space, held on finer nodes
    cnn.project(fine, K, basis)
    assert fine.basis == coarse.basis
    for (n, a), b in zip(coarse.state_dict().items(), fine.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=n)
    x = state(shape)
    coarse.eval(), fine.eval()
    for t in TIMES:
        torch.testing.assert_close(fine(t, x), coarse(t, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(LAYERS))
def test_float64_gradcheck(name):
    layer, shape = _layer(name, 3, "legendre" if not _is_bn(name) else "piecewise_constant")
    layer.train()
    x = state(shape).requires_grad_()
    params = [p for p in layer.parameters()]

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(
            layer, dict(zip([n for n, _ in layer.named_parameters()], ps))
        ):
            return layer(0.37, x)

    torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))


@pytest.mark.parametrize("name", list(LAYERS))
def test_state_dict_round_trip(name):
    layer, shape = _layer(name, 2, "piecewise_constant", seed=4)
    other = LAYERS[name][0](2, "piecewise_constant").double()
    other.load_state_dict(layer.state_dict())
    x = state(shape)
    layer.eval(), other.eval()
    torch.testing.assert_close(other(0.8, x), layer(0.8, x), rtol=0, atol=0)


def test_same_padding_with_even_kernels_and_padding_modes_as_torch():
    x = state((2, 3, 7))
    for kw in [
        dict(padding="same"),
        dict(padding=2, padding_mode="reflect"),
        dict(padding=1, padding_mode="circular", stride=2, dilation=2),
    ]:
        layer = cnn.TimeConv1d(3, 4, 4, n_basis=2, **kw).double()
        ref = _node(layer, nn.Conv1d(3, 4, 4, **kw).double(), 1)
        torch.testing.assert_close(layer(0.9, x), ref(x), rtol=1e-12, atol=1e-12)
    x3 = state((1, 2, 4, 5, 3))
    layer = cnn.TimeConv3d(2, 4, (1, 2, 3), groups=2, padding="same", n_basis=2).double()
    ref = _node(layer, nn.Conv3d(2, 4, (1, 2, 3), groups=2, padding="same").double(), 0)
    torch.testing.assert_close(layer(0.1, x3), ref(x3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: cnn.TimeLinear(0, 3), ValueError, "in_features must be >= 1"),
        (lambda: cnn.TimeLinear(3, "4"), TypeError, "out_features must be an int"),
        (
            lambda: cnn.TimeLinear(3, 4)(0.5, state((2, 5))),
            ValueError,
            r"x must have shape \(\.\.\., 3\) for in_features=3",
        ),
        (
            lambda: cnn.TimeLinear(3, 4)(0.5, torch.ones(2, 3, dtype=torch.long)),
            TypeError,
            "x must be a floating-point",
        ),
        (
            lambda: cnn.TimeConv1d(3, 4, 3)(0.5, state((2, 3, 4, 4))),
            ValueError,
            r"x must have shape \(N, 3, L\) for in_channels=3",
        ),
        (
            lambda: cnn.TimeConv3d(3, 4, 3)(0.5, state((2, 3, 4, 4))),
            ValueError,
            r"x must have shape \(N, 3, D, H, W\)",
        ),
        (lambda: cnn.TimeConv3d(3, 4, (3, 3)), TypeError, "kernel_size must be an int or 3 ints"),
        (lambda: cnn.TimeConv1d(3, 4, 3, dilation=0), ValueError, "dilation must be >= 1"),
        (lambda: cnn.TimeConv2d(3, 4, 3, groups=2), ValueError, "must be divisible by groups"),
        (lambda: cnn.TimeLayerNorm(4, eps=0.0), ValueError, "eps must be > 0"),
        (lambda: cnn.TimeLayerNorm((4, 0)), ValueError, "normalized_shape must be >= 1"),
        (
            lambda: cnn.TimeLayerNorm(4)(0.5, state((2, 5))),
            ValueError,
            "x must end in normalized_shape",
        ),
        (
            lambda: cnn.TimeGroupNorm(3, 4),
            ValueError,
            r"num_channels \(4\) must be divisible by num_groups \(3\)",
        ),
        (lambda: cnn.TimeGroupNorm(2, 4)(0.5, state((2, 6, 3))), ValueError, "num_channels=4"),
        (
            lambda: cnn.TimeBatchNorm1d(3)(0.5, state((2, 3, 4, 4))),
            ValueError,
            "x must be a 2-d or 3-d tensor",
        ),
        (lambda: cnn.TimeBatchNorm3d(3, 0), ValueError, "n_cells must be >= 1"),
        (
            lambda: cnn.TimeBatchNorm2d(3)(float("nan"), state((2, 3, 2, 2))),
            ValueError,
            "t must be finite",
        ),
        (lambda: cnn.TimeLinear(3, 3, basis="spline"), ValueError, "unknown basis 'spline'"),
    ],
)
def test_errors_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_conv_layout_follows_the_functional_op():
    # a TimeConv1d is F.conv1d of the interpolated weight: fem_linear halfway between nodes
    layer = randomise(cnn.TimeConv1d(2, 2, 3, n_basis=2, basis="fem_linear").double())
    x = state((1, 2, 5))
    w = 0.5 * (layer.weight[0] + layer.weight[1])
    b = 0.5 * (layer.bias[0] + layer.bias[1])
    torch.testing.assert_close(layer(0.5, x), F.conv1d(x, w, b, padding=1), rtol=1e-12, atol=1e-12)
