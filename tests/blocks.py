"""Residual blocks as models define them, for the conversion tests: the pre-activation
blocks from_resnet converts, and blocks it must refuse."""

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """The common pre-activation basic block (identity shortcut)."""

    def __init__(self, c, hidden, bias=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, hidden, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, c, 3, 1, 1, bias=bias)
        self.shortcut = nn.Sequential()

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        return self.shortcut(x) + self.conv2(F.relu(self.bn2(out)))


class TimmStyle(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.downsample = None

    def forward(self, x):
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class PostActBlock(nn.Module):
    """The common CIFAR BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + x)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class LayerScaleBlock(PreActBlock):
    """A pre-activation block whose branch is scaled by a learned gamma."""

    def __init__(self, c):
        super().__init__(c, c)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 0.5))

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return x + self.gamma * out


class WithChild(PreActBlock):
    """A pre-activation block with one more submodule on its branch."""

    def __init__(self, c, child):
        super().__init__(c, c)
        self.extra = child

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return x + self.extra(out)


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole branch of a sample (no parameters)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1) >= self.p
        return x * keep / (1 - self.p)
