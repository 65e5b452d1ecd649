"""from_branches: the stages of the models users have (timm ConvNeXt and BiT, torchvision
MobileNet inverted residuals, a Hugging Face pre-norm encoder; random weights, no download)
stacked into one block that computes them exactly, with every manifestation after; and the
refusals, each naming what differs."""

import copy
import warnings

import pytest
import torch
from torch import nn

import contnet

timm = pytest.importorskip("timm")

F64 = torch.float64


class ConvNeXtBranch(nn.Module):
    """The update of a timm ConvNeXtBlock (its forward without the shortcut)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        b = self.block
        y = b.conv_dw(x)
        if b.use_conv_mlp:
            y = b.mlp(b.norm(y))
        else:
            y = b.mlp(b.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if b.gamma is not None:
            y = y.mul(b.gamma.reshape(1, -1, 1, 1))
        return b.drop_path(y)


class PreActBranch(nn.Module):
    """The update of a timm PreActBottleneck with an identity shortcut (BiT)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        b = self.block
        return b.drop_path(b.conv3(b.norm3(b.conv2(b.norm2(b.conv1(b.norm1(x)))))))


class Update(nn.Module):
    """A whole residual layer's update, ``layer(x) - x`` (a Hugging Face layer returns the
    new state)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, **kwargs):
        out = self.layer(x, **kwargs)
        return (out[0] if isinstance(out, tuple) else out) - x


def _layers(layers):
    """A Hugging Face encoder's stage: its layers in turn (each returns the new state, or a
    tuple that starts with it)."""

    def stage(h):
        for layer in layers:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
        return h

    return stage


def _randomise_norms(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _check_stage(stage, branches, x, **kwargs):
    """The block computes the stage in float64 to 1e-12, and other manifestations run."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # branches are not mistaken for whole blocks
        want = stage(x)
        block = contnet.from_branches(branches, x, **kwargs)
        got = block(x, **kwargs)
    assert (got - want).abs().max().item() <= 1e-12 * (1 + want.abs().max().item())
    assert block.unit.n_basis == len(branches) and (block.scheme, block.n_steps) == (
        "euler",
        len(branches),
    )
    with torch.no_grad():
        block.scheme, block.n_steps = "rk4", 2 * len(branches)
        assert torch.isfinite(block(x, **kwargs)).all()
        if len(branches) % 2 == 0:
            contnet.project(block, len(branches) // 2)
            block.scheme, block.n_steps = "euler", len(branches) // 2
            assert torch.isfinite(block(x, **kwargs)).all()
    return block


def test_a_timm_convnext_stage():
    model = timm.create_model("convnext_atto", pretrained=False).to(F64).eval()
    stage = model.stages[2].blocks  # 6 blocks of 160 channels, layer scale (gamma) on
    assert stage[0].gamma is not None
    x = torch.randn(2, 160, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    _check_stage(stage, [ConvNeXtBranch(b) for b in stage], x)


def test_a_timm_bit_stage():
    """StdConv2d + GroupNormAct (from_resnet refuses them)."""
    model = timm.create_model("resnetv2_50x1_bit", pretrained=False).to(F64).eval()
    stage = model.stages[0].blocks[1:]  # identity shortcuts
    with pytest.raises(ValueError):
        contnet.from_resnet(stage)
    x = torch.randn(2, 256, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    _check_stage(stage, [PreActBranch(b) for b in stage], x)


def test_torchvision_mobilenet_inverted_residuals():
    tv = pytest.importorskip("torchvision")
    model = tv.models.mobilenet_v2(weights=None).to(F64)
    _randomise_norms(model)
    model.eval()
    stage = model.features[8:11]  # three 64-channel inverted residuals with identity shortcuts
    assert all(b.use_res_connect for b in stage)
    x = torch.randn(2, 64, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    block = _check_stage(stage, [b.conv for b in stage], x)
    # batch-norm statistics: one set per cell, cell k branch k's
    bn = [m for m in block.unit.module.modules() if isinstance(m, nn.BatchNorm2d)][0]
    first = [m for m in stage[1].conv.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert torch.equal(bn.running_mean[1], first.running_mean)


def test_a_hugging_face_pre_norm_encoder():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        image_size=8, patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTModel(config).to(F64).eval()
    layers = model.layers if hasattr(model, "layers") else model.encoder.layer
    x = torch.randn(2, 5, 32, dtype=F64, generator=torch.Generator().manual_seed(4))

    _check_stage(_layers(layers), [Update(layer) for layer in layers], x)


def test_the_block_trains_refines_and_keeps_the_stages_modes():
    torch.manual_seed(0)
    branches = [nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 6), nn.Tanh()) for _ in range(4)]
    for b in branches:
        b.train()
    x = torch.randn(8, 6)
    before = [copy.deepcopy(b.state_dict()) for b in branches]
    block = contnet.from_branches(branches, x)
    assert block.training and block.unit.module[0].training
    for b, sd in zip(branches, before):  # the probe ran in eval mode and changed nothing
        assert b.training
        for k, v in b.state_dict().items():
            assert torch.equal(v, sd[k]), k
    loss = block(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in block.parameters())
    contnet.refine(block)
    assert block.unit.n_basis == 8


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: [nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4))], r"branches\[1\] differs .*module \(the branch\)"),
        (lambda: [nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=2)], r"branches\[1\] differs .*padding"),
        (lambda: [nn.Linear(4, 4), nn.Linear(4, 4, bias=False)], r"branches\[1\] differs"),
        (lambda: [nn.Linear(4, 4), nn.Linear(4, 4).double()], r"branches\[1\] differs .*parameter weight"),
        (lambda: [nn.Linear(4, 4), nn.Linear(4, 4).eval()], r"branches\[1\] differs .*mode"),
        (lambda: [nn.LayerNorm(4), nn.LayerNorm(4, eps=1e-3)], r"branches\[1\] differs .*eps"),
    ],
)  # fmt: skip
def test_branches_of_different_structure_are_refused_naming_the_difference(make, message):
    with pytest.raises(ValueError, match=message):
        contnet.from_branches(make(), torch.randn(3, 4))


class _Buffered(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("mask", torch.full((4,), value))

    def forward(self, x):
        return self.lin(x) * self.mask


class _Counter(nn.Module):
    """A branch whose forward reads a Python counter it advances: not a function of its
    tensors, which the probe catches."""

    calls = 0

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        type(self).calls += 1
        return self.lin(x) * type(self).calls


def test_other_refusals_name_what_they_found():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"branches\[1\] holds buffer mask"):
        contnet.from_branches([_Buffered(1.0), _Buffered(2.0)], x)
    with pytest.raises(ValueError, match=r"differs from the stage after branches\[0\]"):
        contnet.from_branches([_Counter(), _Counter()], x)
    with pytest.raises(TypeError, match="branches must be a sequence"):
        contnet.from_branches(nn.Linear(4, 4), x)
    with pytest.raises(ValueError, match="at least one"):
        contnet.from_branches([], x)
    with pytest.raises(TypeError, match=r"branches\[1\] must be an nn.Module"):
        contnet.from_branches([nn.Linear(4, 4), "linear"], x)
    with pytest.raises(TypeError, match="example must be a floating-point tensor"):
        contnet.from_branches([nn.Linear(4, 4)], None)


def test_a_post_norm_hugging_face_encoder_whose_layers_index_their_caches():
    """BERT's layers differ in layer_idx (the index of a key-value cache, read only with
    one): stacked all the same; the update of a post-norm layer is layer(x) - x."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(config).to(F64).eval()
    layers = model.encoder.layer
    assert len({getattr(layer.attention.self, "layer_idx", 0) for layer in layers}) > 1
    x = torch.randn(2, 5, 32, dtype=F64, generator=torch.Generator().manual_seed(6))

    _check_stage(_layers(layers), [Update(layer) for layer in layers], x)


def test_whole_blocks_given_for_branches_are_warned_about():
    """What a user's audit found: whole blocks x + f(x) were stacked without a word, and the
    block added x twice."""
    tv = pytest.importorskip("torchvision")
    stage = tv.models.mobilenet_v2(weights=None).to(F64).eval().features[8:11]
    x = torch.randn(2, 64, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="whole residual block x \\+ f\\(x\\)"):
        contnet.from_branches(list(stage), x)


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x), x


def test_unclear_messages_the_audit_found_are_clear():
    x = torch.randn(3, 4)
    short = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    long = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Tanh())
    with pytest.raises(
        ValueError, match="branches\\[1\\] differs from branches\\[0\\]: it has module 2 where"
    ):
        contnet.from_branches([short, long], x)
    with pytest.raises(
        TypeError, match="branches\\[0\\] must return the update f\\(x\\).*got tuple"
    ):
        contnet.from_branches([_Pair(), _Pair()], x)
