"""What the memory-saving backprop modes differentiate beyond the state and the unit's
weights: tensors passed by keyword (conditioning inputs, cross-attention memories) get
their gradients in every mode; state a recomputed step would change again is refused;
forward-mode AD runs through every mode."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

import contnet

MODES = ("direct", "checkpoint", "adjoint")


class Conditioned(nn.Module):
    """A rate reading a conditioning vector and a cross-attention memory (keywords)."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.q = nn.Linear(dim, dim)

    def forward(self, t, x, c=None, memory=None):
        k, v = memory
        attn = F.scaled_dot_product_attention(self.q(x), k, v)
        return torch.tanh(self.fc(x) * (1 + t) + c[:, None, :]) + attn


def _inputs(dim=6):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, dim, generator=g, dtype=torch.float64)
    cin = torch.randn(2, 3, generator=g, dtype=torch.float64)
    mem = torch.randn(2, 4, dim, generator=g, dtype=torch.float64)
    return x, cin, mem


@pytest.mark.parametrize("scheme", ["rk4", "euler", "ab2", "lm"])
def test_keyword_tensors_get_their_gradients_in_every_mode(scheme):
    x, cin, mem = _inputs()
    grads = {}
    for mode in MODES:
        if mode == "adjoint" and scheme in ("ab2", "lm"):
            continue
        torch.manual_seed(0)
        enc, kv = nn.Linear(3, 6).double(), nn.Linear(6, 12).double()
        block = contnet.ContinuousBlock(
            Conditioned(6).double(), scheme=scheme, n_steps=8, backprop=mode
        ).double()
        k, v = kv(mem).chunk(2, -1)
        out = block(x, c=enc(cin), memory=(k, v))
        out.square().sum().backward()
        grads[mode] = [enc.weight.grad, kv.weight.grad, block.unit.fc.weight.grad]
        assert all(g is not None for g in grads[mode]), mode
    for a, b in zip(grads["direct"], grads["checkpoint"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)  # exact
    if "adjoint" in grads:  # approximate: close at 8 steps, closer for a higher order
        bound = {"rk4": 1e-3, "euler": 0.2}[scheme]
        for a, b in zip(grads["direct"], grads["adjoint"]):
            assert ((b - a).norm() / a.norm()).item() < bound


def test_a_keyword_computed_from_another_keyword_is_refused():
    # a cross-attention memory h and a conditioning vector pooled from it: the gradient
    # through the pooled one would reach h twice
    x, _, mem = _inputs()
    enc = nn.Linear(6, 6).double()
    block = contnet.ContinuousBlock(Conditioned(6).double(), n_steps=2, backprop="checkpoint")
    h = enc(mem)
    with pytest.raises(ValueError, match="'c' is computed from another tensor"):
        block(x, c=h.mean(1), memory=(h, h))
    k, v = enc(mem).chunk(2, -1)  # outputs of one operation, neither computed from the other
    block = contnet.ContinuousBlock(Conditioned(3).double(), n_steps=2, backprop="checkpoint")
    block(x[..., :3], c=torch.zeros(2, 3, dtype=torch.float64), memory=(k, v)).sum().backward()
    assert enc.weight.grad is not None


def test_a_keyword_computed_from_the_units_own_weights_is_refused():
    block = contnet.ContinuousBlock(Conditioned(6).double(), n_steps=2, backprop="checkpoint")
    x, _, mem = _inputs()
    c = block.unit.fc.bias.expand(2, 6) * 2
    with pytest.raises(ValueError, match="keyword argument 'c' is computed from another tensor"):
        block(x, c=c, memory=(mem, mem))
    block.backprop = "direct"
    block(x, c=c, memory=(mem, mem)).sum().backward()  # direct differentiates it whole
    block.backprop = "checkpoint"
    block(x, c=c.detach(), memory=(mem, mem)).sum().backward()


class Spectral(nn.Module):
    def __init__(self, old_style=False):
        super().__init__()
        lin = nn.Linear(4, 4).double()
        if old_style:
            self.fc = nn.utils.spectral_norm(lin)
        else:
            self.fc = nn.utils.parametrizations.spectral_norm(lin)

    def forward(self, t, x):
        return torch.tanh(self.fc(x))


@pytest.mark.parametrize("old_style", [False, True])
def test_state_a_recomputed_step_would_change_again_is_refused(old_style):
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64)
    block = contnet.ContinuousBlock(Spectral(old_style), n_steps=3, backprop="checkpoint")
    with pytest.raises(ValueError, match="updates its state at every call in training mode"):
        block(x)
    block.backprop = "adjoint"
    with pytest.raises(ValueError, match="backprop='adjoint'"):
        block(x)
    # without gradients nothing is recomputed; in eval mode the power iteration keeps still
    with torch.no_grad():
        block(x)
    block.eval()
    grads = {}
    for mode in ("direct", "checkpoint"):
        block.backprop = mode
        grads[mode] = torch.autograd.grad(block(x).sum(), list(block.parameters()))
    for a, b in zip(grads["direct"], grads["checkpoint"]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "unit",
    [
        lambda: contnet.ConvUnit(4, n_basis=2, basis="fem_linear", act="gelu"),
        lambda: contnet.MLPUnit(4, n_basis=2),
        lambda: contnet.time_dependent(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), n_basis=2),
    ],
)
def test_forward_mode_ad_runs_through_every_mode(mode, unit):
    torch.manual_seed(0)
    block = contnet.ContinuousBlock(unit(), n_steps=3, backprop=mode).double()
    conv = isinstance(block.unit, contnet.ConvUnit)
    x = torch.randn((2, 4, 5, 5) if conv else (3, 4), dtype=torch.float64)
    v = torch.randn_like(x)
    with fwAD.dual_level():
        out = block(fwAD.make_dual(x, v))
        jvp = fwAD.unpack_dual(out).tangent
    eps = 1e-6  # central differences of the same block
    with torch.no_grad():
        fd = (block(x + eps * v) - block(x - eps * v)) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-7)


def test_a_keyword_holding_tensors_inside_an_object_is_refused():
    # checkpoint and adjoint differentiate the tensors they can see (alone, or in tuples,
    # lists and dicts); one inside a dataclass or a module would silently get no gradient
    import dataclasses

    @dataclasses.dataclass
    class Memory:
        keys: torch.Tensor

    class Reads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, t, x, mem=None):
            return torch.tanh(self.fc(x) + mem.keys)

    x = torch.randn(2, 6)
    enc = nn.Linear(3, 6)
    mem = Memory(enc(torch.randn(2, 3)))
    for mode in ("checkpoint", "adjoint"):
        block = contnet.ContinuousBlock(Reads(), n_steps=2, backprop=mode)
        with pytest.raises(
            ValueError, match="'mem' holds tensors that need a gradient inside a Memory"
        ):
            block(x, mem=mem)
        with torch.no_grad():
            block(x, mem=mem)  # nothing to differentiate
        block(x, mem=Memory(mem.keys.detach())).sum().backward()
    block.backprop = "direct"
    block(x, mem=mem).sum().backward()
    assert enc.weight.grad is not None
