"""time_dependent makes a residual branch a rate; a whole residual block x + f(x) given in
its place would make a block add x twice. The first call warns where the module's output
points along its input, as whole blocks' do, and not for their branches (timm,
torchvision and Hugging Face definitions, random weights)."""

import warnings

import pytest
import torch
from torch import nn

import contnet

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")


class Increment(nn.Module):
    """``layer(x) - x``: a whole block or a post-norm layer as the update it makes."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x) - x


def _vit_block():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False).blocks[0].eval()


def _bert_layer():
    cfg = transformers.BertConfig(
        hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=1
    )
    cfg._attn_implementation = "eager"
    return transformers.models.bert.modeling_bert.BertLayer(cfg).eval()


def _gpt2_block():
    cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=1)
    cfg._attn_implementation = "eager"
    return transformers.models.gpt2.modeling_gpt2.GPT2Block(cfg).eval()


def _inverted_residual():
    return torchvision.models.mobilenet_v2().features[3].eval()  # 24 -> 24, residual


def _realistic(kind):
    """A block of a model and its branch, with the input the model gives it (post-ReLU
    activations, not white noise), at random init."""
    torch.manual_seed(0)
    with torch.no_grad():
        if kind == "resnet18":
            rn = torchvision.models.resnet18().eval()
            x = rn.layer1[0](rn.maxpool(rn.relu(rn.bn1(rn.conv1(torch.randn(2, 3, 64, 64))))))
            b = rn.layer1[1]
            return b, nn.Sequential(b.conv1, b.bn1, b.relu, b.conv2, b.bn2), x
        if kind == "resnetv2_50":
            m = timm.create_model("resnetv2_50", pretrained=False).eval()
            x = m.stages[0].blocks[0](m.stem(torch.randn(2, 3, 64, 64)))
            b = m.stages[0].blocks[1]
            return b, nn.Sequential(b.norm1, b.conv1, b.norm2, b.conv2, b.norm3, b.conv3), x
        mb = torchvision.models.mobilenet_v2()  # training mode: batch statistics
        x = mb.features[:3](torch.randn(4, 3, 64, 64))
        return mb.features[3], mb.features[3].conv, x


@pytest.mark.parametrize("kind", ["resnet18", "resnetv2_50", "mobilenet_v2 in training"])
def test_whole_blocks_on_their_models_inputs_are_warned_about_and_branches_not(kind):
    whole, branch, x = _realistic(kind)
    with pytest.warns(UserWarning, match="whole residual block"), torch.no_grad():
        contnet.time_dependent(whole)(0.0, x)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        contnet.time_dependent(branch)(0.0, x)


WHOLE = {
    "timm ViT Block": (_vit_block, (2, 5, 192)),
    "timm ConvNeXt block": (
        lambda: timm.create_model("convnext_atto", pretrained=False).stages[0].blocks[0].eval(),
        (2, 40, 8, 8),
    ),
    "transformers BertLayer (post-norm)": (_bert_layer, (2, 5, 32)),
    "transformers GPT2Block": (_gpt2_block, (2, 5, 32)),
    "torchvision InvertedResidual": (_inverted_residual, (2, 24, 8, 8)),
}

BRANCHES = {
    "timm ViT attention branch": (
        lambda: nn.Sequential(_vit_block().norm1, _vit_block().attn),
        (2, 5, 192),
    ),
    "timm ViT MLP branch": (
        lambda: nn.Sequential(_vit_block().norm2, _vit_block().mlp),
        (2, 5, 192),
    ),
    "GPT2 MLP branch": (lambda: nn.Sequential(_gpt2_block().ln_2, _gpt2_block().mlp), (2, 5, 32)),
    "InvertedResidual branch": (lambda: _inverted_residual().conv, (2, 24, 8, 8)),
    "BertLayer as layer(x) - x": (lambda: Increment(_bert_layer()), (2, 5, 32)),
    "GPT2Block as block(x) - x": (lambda: Increment(_gpt2_block()), (2, 5, 32)),
}


@pytest.mark.parametrize("name", list(WHOLE))
def test_a_whole_residual_block_is_warned_about_once(name):
    build, shape = WHOLE[name]
    torch.manual_seed(0)
    rate = contnet.time_dependent(build())
    block = contnet.ContinuousBlock(rate, scheme="euler", n_steps=1)
    x = torch.randn(shape)
    with pytest.warns(UserWarning, match="whole residual block"):
        block(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block(x)  # once
        quiet = contnet.time_dependent(build(), residual_check=False)
        contnet.ContinuousBlock(quiet, scheme="euler", n_steps=1)(x)


@pytest.mark.parametrize("name", list(BRANCHES))
def test_a_branch_is_not_warned_about_and_reproduces_its_block(name):
    build, shape = BRANCHES[name]
    torch.manual_seed(0)
    branch = build().double()
    x = torch.randn(shape, dtype=torch.float64)
    block = contnet.ContinuousBlock(contnet.time_dependent(branch), scheme="euler", n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = block(x)
    with torch.no_grad():
        torch.testing.assert_close(y, x + branch(x), rtol=1e-12, atol=1e-12)
