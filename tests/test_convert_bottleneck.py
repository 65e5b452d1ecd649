"""from_resnet on pre-activation bottleneck stages, against timm's own ResNetV2 block
definitions (random weights, nothing downloaded): converted exactly and self-checked, or
refused naming the block and what it found."""

import functools

import pytest
import torch
from torch import nn

import contnet

from .helpers import randomise_norms

timm = pytest.importorskip("timm")
from timm.layers import BatchNormAct2d, create_conv2d  # noqa: E402
from timm.models.resnetv2 import PreActBottleneck  # noqa: E402


def _stage(n, chs=32, dtype=torch.float64, **kw):
    kw = {"conv_layer": create_conv2d, "norm_layer": BatchNormAct2d, **kw}
    blocks = nn.Sequential(*[PreActBottleneck(chs, chs, **kw) for _ in range(n)]).to(dtype)
    randomise_norms(blocks)
    return blocks.eval()


@pytest.mark.parametrize("n", [1, 3])
def test_timm_preact_bottleneck_stage_converts_exactly(n):
    stage = _stage(n)
    block = contnet.from_resnet(stage)
    assert isinstance(block.unit, contnet.BottleneckUnit)
    assert block.unit.n_basis == n and block.unit.bottleneck == 8
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block.eval()(x), stage(x), rtol=1e-6, atol=1e-6)
        err = (block(x) - stage(x)).abs().max().item()
    assert err < 1e-12


def test_grouped_and_float32_bottlenecks_convert():
    stage = _stage(2, chs=64, dtype=torch.float32, groups=4)
    block = contnet.from_resnet(stage)
    assert block.unit.conv2.groups == 4
    x = torch.randn(2, 64, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block.eval()(x), stage(x), rtol=1e-5, atol=1e-5)


def test_the_stages_of_timms_resnetv2_50_convert_after_their_first_block():
    model = timm.create_model("resnetv2_50", pretrained=False).double().eval()
    randomise_norms(model)
    blocks = model.stages[1].blocks
    with pytest.raises(ValueError, match=r"stage\[0\]\.downsample is not an identity shortcut"):
        contnet.from_resnet(blocks)
    block = contnet.from_resnet(blocks[1:])
    x = torch.randn(1, 512, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block.eval()(x), blocks[1:](x), rtol=1e-6, atol=1e-6)


def test_a_slice_of_an_eval_model_converts_to_an_eval_block_without_touching_statistics():
    # slicing is how a user skips the downsampling block; the slice is a new Sequential,
    # in training mode: the block takes the mode of the blocks themselves
    model = timm.create_model("resnetv2_50", pretrained=False).double().eval()
    randomise_norms(model)
    stage = model.stages[0].blocks[1:]
    assert stage.training and not stage[0].training
    before = {n: b.clone() for n, b in model.named_buffers()}
    block = contnet.from_resnet(stage)
    assert not block.training and not any(m.training for m in block.modules())
    x = torch.randn(2, 256, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), stage(x), rtol=1e-10, atol=1e-10)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    # a stage in training mode gives a block in training mode; mixed modes are refused
    assert contnet.from_resnet(model.train().stages[0].blocks[1:]).training
    mixed = model.stages[0].blocks[1:]
    mixed[0].eval()
    with pytest.raises(ValueError, match="different modes"):
        contnet.from_resnet(mixed)
    mixed[0].train()
    mixed[1].norm2.eval()  # a frozen norm in one block only
    with pytest.raises(ValueError, match="batch norms 2 are in different modes"):
        contnet.from_resnet(mixed)
    for b in mixed:
        b.norm2.eval()  # frozen in every block: the block's second norm is frozen too
    block = contnet.from_resnet(mixed)
    assert block.training and not block.unit.norm2.training and block.unit.norm1.training


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"conv_layer": None}, r"stage\[0\]\.conv1 must be a plain nn\.Conv2d, got StdConv2d"),
        (
            {"norm_layer": functools.partial(timm.layers.GroupNormAct, num_groups=8)},
            r"stage\[0\]\.norm1 must be an nn\.BatchNorm2d with running statistics, got GroupNormAct",
        ),
        (
            {"conv_layer": functools.partial(create_conv2d, padding=0)},
            r"stage\[0\]\.conv2 must be a same-size convolution",
        ),
    ],
)
def test_timm_blocks_it_cannot_map_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        contnet.from_resnet(_stage(2, **kw))


def test_a_bottleneck_whose_forward_does_something_else_fails_the_probe():
    class PostAct(PreActBottleneck):
        def forward(self, x):  # the layers of a pre-activation block, used after the add
            return torch.relu(
                self.norm1(self.conv3(self.norm3(self.conv2(self.norm2(self.conv1(x))))) + x)
            )

    kw = {"conv_layer": create_conv2d, "norm_layer": BatchNormAct2d}
    stage = nn.Sequential(PostAct(32, 32, **kw)).double()
    # conv3 maps back to 32 channels; norm1 on them is what the pre-activation form reads
    randomise_norms(stage)
    with pytest.raises(
        ValueError,
        match=r"stage\[0\] \(PostAct\) does not compute the pre-activation residual x \+ conv3",
    ):
        contnet.from_resnet(stage.eval())


def test_timm_drop_path_becomes_the_blocks_stochastic_depth():
    """Each block's drop-path rate on its cell: eval exact; in training the same drop
    probability per sample, kept updates rescaled as timm's DropPath rescales them."""
    kw = {"conv_layer": create_conv2d, "norm_layer": BatchNormAct2d}
    rates = [0.0, 0.1, 0.3]
    stage = nn.Sequential(*[PreActBottleneck(32, 32, drop_path_rate=r, **kw) for r in rates])
    stage = stage.double()
    randomise_norms(stage)
    stage.eval()
    block = contnet.from_resnet(stage)
    sd = block.stochastic_depth
    assert (sd.schedule, sd.mode, sd.cells) == ("cells", "row", tuple(rates))
    starts = [row[0] for row in contnet.schemes.stage_times("euler", 3, 0.0, 1.0)]
    assert [sd.probability(t) for t in starts] == rates
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block.eval()(x), stage(x), rtol=1e-10, atol=1e-10)
    # the drops: per sample, as often as timm's, the same scale where kept
    ones = torch.ones(200000, 1, dtype=torch.float64)
    torch.manual_seed(0)
    ours = sd.factors(ones, starts)
    for r, b, f in zip(rates, stage, ours):
        torch.manual_seed(1)
        theirs = b.drop_path.train()(ones)
        if r == 0:
            assert f is None
            continue
        assert set(f.unique().tolist()) == set(theirs.unique().tolist()) == {0.0, 1 / (1 - r)}
        assert abs((f == 0).double().mean().item() - (theirs == 0).double().mean().item()) < 0.005
    stage[1].drop_path.scale_by_keep = False
    with pytest.raises(ValueError, match=r"stage\[1\]\.drop_path has scale_by_keep=False"):
        contnet.from_resnet(stage)
