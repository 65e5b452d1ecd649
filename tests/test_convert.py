"""from_resnet: a pre-activation stage converts exactly; anything the conversion does not
map, or a forward that computes something else, is refused naming the block."""

import pytest
import torch
from torch import nn

import contnet

from .blocks import (
    DropPath,
    LayerScaleBlock,
    PostActBlock,
    PreActBlock,
    SqueezeExcite,
    TimmStyle,
    WithChild,
)
from .helpers import randomise_norms


@pytest.mark.parametrize(
    "make", [lambda: PreActBlock(4, 6), lambda: PreActBlock(4, 4, bias=True), lambda: TimmStyle(4)]
)
def test_from_resnet_reproduces_stage(make):
    stage = nn.Sequential(*[make() for _ in range(3)]).double()
    randomise_norms(stage)
    stage.eval()
    block = contnet.from_resnet(stage)
    assert (block.scheme, block.n_steps, block.unit.n_basis, block.unit.basis.family) == (
        "euler",
        3,
        3,
        "piecewise_constant",
    )
    assert not block.training
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), stage(x), rtol=0, atol=1e-6)
        assert (block(x) - stage(x)).abs().max() < 1e-12


def test_from_resnet_refuses_what_it_cannot_convert():
    with pytest.raises(ValueError, match="at least one residual block"):
        contnet.from_resnet(nn.Sequential())
    b = PreActBlock(4, 4)
    b.shortcut = nn.Sequential(nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="identity shortcut"):
        contnet.from_resnet([b])
    b = PreActBlock(4, 4)
    b.conv1 = nn.Conv2d(4, 4, 3, 2, 1)
    with pytest.raises(ValueError, match="stride 1"):
        contnet.from_resnet([b])
    with pytest.raises(ValueError, match="no bn1/norm1"):
        contnet.from_resnet([nn.Conv2d(4, 4, 3)])
    # batch-norm settings a converted block would change silently
    b = PreActBlock(4, 4)
    b.bn2.momentum = None
    with pytest.raises(ValueError, match=r"stage\[0\]\.bn2 has momentum=None"):
        contnet.from_resnet([b])
    b = PreActBlock(4, 4)
    b.bn1.momentum = 0.2
    with pytest.raises(
        ValueError, match=r"stage\[1\] batch norms must share eps=1e-05 and momentum=0.1"
    ):
        contnet.from_resnet([PreActBlock(4, 4), b])


def _stage(*blocks, dtype=torch.float64):
    stage = nn.Sequential(*blocks).to(dtype)
    randomise_norms(stage)
    return stage


def test_from_resnet_refuses_the_post_activation_basic_block():
    # the stage: bn1/conv1/bn2/conv2 and an empty Sequential shortcut, as a
    # pre-activation block has; only running it shows it computes something else
    stage = _stage(PostActBlock(4), PostActBlock(4)).eval()
    with pytest.raises(ValueError, match=r"stage\[0\] \(PostActBlock\) does not compute"):
        contnet.from_resnet(stage)
    # after a pre-activation block, the post-activation one is named
    stage = _stage(PreActBlock(4, 4), PostActBlock(4))
    with pytest.raises(ValueError, match=r"stage\[1\] \(PostActBlock\) does not compute"):
        contnet.from_resnet(stage)
    assert stage.training  # modes left as they were


def test_from_resnet_refuses_a_layer_scale():
    with pytest.raises(ValueError, match=r"stage\[0\] \(LayerScaleBlock\) holds parameter 'gamma'"):
        contnet.from_resnet(_stage(LayerScaleBlock(4)))


@pytest.mark.parametrize(
    "child, kind",
    [
        (nn.Dropout(0.1), "Dropout"),
        (DropPath(0.1), "DropPath"),
        (SqueezeExcite(4), "SqueezeExcite"),
    ],
)
def test_from_resnet_refuses_a_submodule_it_does_not_map(child, kind):
    with pytest.raises(
        ValueError, match=rf"stage\[1\] \(WithChild\) has a submodule 'extra' \({kind}\)"
    ):
        contnet.from_resnet(_stage(PreActBlock(4, 4), WithChild(4, child)))


def test_from_resnet_maps_what_computes_nothing():
    # an activation module and identities (timm's drop_path at rate 0) are fine
    class Named(PreActBlock):
        def __init__(self, c):
            super().__init__(c, c)
            self.relu, self.drop_path, self.downsample = nn.ReLU(inplace=True), nn.Identity(), None

    stage = _stage(Named(4), Named(4)).eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(contnet.from_resnet(stage).eval()(x), stage(x))


def test_from_resnet_names_norm_features_of_a_post_activation_shape():
    # conv1 4 -> 6: a post-activation block normalises 6 then 4 features
    b = PreActBlock(4, 6)
    b.bn1, b.bn2 = nn.BatchNorm2d(6), nn.BatchNorm2d(4)
    with pytest.raises(
        ValueError,
        match=r"stage\[0\] batch norm 1 has 6 features; a pre-activation block normalises conv1's input \(4\)",
    ):
        contnet.from_resnet([b])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_from_resnet_checks_in_the_stages_dtype(dtype):
    # converts (the check allows its rounding) and the block computes the stage
    stage = _stage(*[PreActBlock(8, 8, bias=True) for _ in range(4)], dtype=dtype).eval()
    block = contnet.from_resnet(stage)
    assert block.unit.conv1.weight.dtype == dtype
    x = torch.randn(2, 8, 6, 6).to(dtype)
    with torch.no_grad():
        ref = stage(x).double()
        err = (block(x).double() - ref).abs().max() / (1 + ref.abs().max())
    assert err <= 4 * 4 * torch.finfo(dtype).eps
