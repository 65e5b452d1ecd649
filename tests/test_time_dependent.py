"""contnet.time_dependent: any module made time-dependent computes what the module did,
refines and projects like contnet's own layers, and a block reads all of its tensors in
one lookup."""

import copy
from unittest import mock

import pytest
import torch
from torch import nn

import contnet
from contnet import ops

from .cases import SelfAttention, mlp_branch, state


def test_sequential_computes_what_it_did_before_and_after_refine():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 5)).double()
    x = state((3, 5))
    ref = module(x)
    m = contnet.time_dependent(copy.deepcopy(module), n_basis=1)
    for t in (0.0, 0.3, 1.0):
        torch.testing.assert_close(m(t, x), ref, rtol=0, atol=0)
    contnet.refine(m)
    contnet.refine(m)
    assert m.n_basis == 4 and m.module[0].weight.shape == (4, 7, 5)
    for t in (0.0, 0.3, 0.6, 1.0):
        torch.testing.assert_close(m(t, x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_computes_what_it_did_before_and_after_refine(batch_first):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).double()
    shape = (2, 3, 8) if batch_first else (3, 2, 8)  # batch 2, length 3
    q, k, v = (state(shape, seed=s) for s in (1, 2, 3))
    mask = torch.tensor([[False, False, True]] * 2)
    ref, ref_w = mha(q, k, v, key_padding_mask=mask)
    m = contnet.time_dependent(copy.deepcopy(mha))
    out, w = m(0.4, q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=0)
    contnet.refine(m)
    out, w = m(0.9, q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert {n for n, _ in m.named_parameters()} == {
        "module." + n for n, _ in mha.named_parameters()
    }


@pytest.mark.parametrize("basis,K", [("legendre", 3), ("fem_linear", 2), ("piecewise_linear", 2)])
def test_every_basis_starts_at_the_modules_values(basis, K):
    module = mlp_branch(4).double()
    x = state((3, 4))
    m = contnet.time_dependent(copy.deepcopy(module), n_basis=K, basis=basis)
    for t in (0.0, 0.25, 0.5, 1.0):
        torch.testing.assert_close(m(t, x), module(x), rtol=1e-13, atol=1e-13)


def test_tied_parameters_stay_tied_and_buffers_stay():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.b(torch.tanh(self.a(self.bn(x))))

    module = Tied().double().eval()
    x = state((5, 4))
    ref = module(x)
    m = contnet.time_dependent(copy.deepcopy(module), n_basis=2)
    assert m.module.a.weight is m.module.b.weight
    assert len(m.basis_tensors()) == 3 + 2  # a.weight (tied), a.bias, b.bias, bn affine
    assert m.module.bn.running_mean.shape == (4,)  # buffers as they were
    m.eval()
    torch.testing.assert_close(m(0.7, x), ref, rtol=0, atol=0)
    contnet.refine(m)
    assert m.module.a.weight is m.module.b.weight and m.module.a.weight.shape[0] == 4
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    m(0.2, x).square().sum().backward()
    opt.step()
    assert m.module.a.weight is m.module.b.weight


def test_a_block_reads_every_tensor_in_one_lookup_and_refines_with_the_optimizer():
    unit = contnet.time_dependent(SelfAttention(4, 2).double(), n_basis=3, basis="fem_linear")
    block = contnet.ContinuousBlock(unit, scheme="rk4", n_steps=3)
    x = state((2, 5, 4))
    calls = []
    real = ops.basis_interp

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    with mock.patch.object(ops, "basis_interp", counting):
        out = block(x)
    assert calls == [len(unit.basis_tensors())]  # one launch, all of them
    with torch.no_grad():
        plain = x
        for n in range(3):  # the same with the unit looking its weights up at each stage
            plain = contnet.odeint(
                lambda t, y: unit(t, y), plain, scheme="rk4", n_steps=1, t0=n / 3, t1=(n + 1) / 3
            )
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    opt = torch.optim.Adam(block.parameters(), lr=1e-3)
    block(x).square().sum().backward()
    opt.step()
    before = block(x)
    contnet.refine(block, optimizer=opt, steps=False)
    torch.testing.assert_close(block(x), before, rtol=1e-12, atol=1e-12)
    assert all(p in opt.state for p in block.parameters())
    opt.zero_grad()
    block(x).square().sum().backward()
    opt.step()  # the moved state has the new shapes


def test_checkpoint_backprop_through_a_users_branch_with_batch_norm():
    branch = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh()).double()
    block = contnet.ContinuousBlock(contnet.time_dependent(branch, n_basis=2), n_steps=4)
    x = state((4, 3, 5, 5)).requires_grad_()
    grads = {}
    for mode in ("direct", "checkpoint"):
        block.backprop = mode
        branch[1].reset_running_stats()
        out = block(x)
        grads[mode] = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
        stats = branch[1].running_mean.clone()
        grads[mode + "-stats"] = stats
    for a, b in zip(grads["direct"], grads["checkpoint"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["checkpoint-stats"], grads["direct-stats"])


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: contnet.time_dependent("linear"), TypeError, "module must be an nn.Module"),
        (lambda: contnet.time_dependent(nn.ReLU()), ValueError, "at least one parameter"),
        (
            lambda: contnet.time_dependent(nn.Linear(2, 2), n_basis=0),
            ValueError,
            "n_basis must be >= 1",
        ),
        (
            lambda: contnet.time_dependent(nn.Linear(2, 2), basis="spline"),
            ValueError,
            "unknown basis",
        ),
        (
            lambda: contnet.time_dependent(nn.Sequential(contnet.nn.TimeLinear(2, 2))),
            ValueError,
            "time-dependent layers already",
        ),
        (
            lambda: contnet.time_dependent(nn.utils.parametrizations.weight_norm(nn.Linear(2, 2))),
            ValueError,
            "parametrized",
        ),
        (
            lambda: contnet.time_dependent(nn.Linear(2, 2))(float("inf"), state((1, 2))),
            ValueError,
            "t must be finite",
        ),
    ],
)
def test_errors_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_module_taking_weights_is_refused():
    class Takes(nn.Linear):
        def forward(self, x, weights=None):
            return super().forward(x)

    with pytest.raises(ValueError, match="'weights'"):
        contnet.time_dependent(Takes(2, 2))


def test_checkpoint_of_a_refined_users_branch_loads_into_a_fresh_one(tmp_path):
    from contnet.training import load_checkpoint, load_model_state, save_checkpoint

    def build():
        torch.manual_seed(0)
        branch = contnet.time_dependent(mlp_branch(4), n_basis=2, basis="fem_linear")
        return nn.Sequential(contnet.ContinuousBlock(branch, n_steps=2), nn.Linear(4, 2))

    model = build().double()
    contnet.refine(model)
    with torch.no_grad():
        model[0].unit.module[0].weight.add_(0.1 * torch.randn_like(model[0].unit.module[0].weight))
    save_checkpoint(tmp_path / "ck.pt", model)
    fresh = build().double()
    load_model_state(load_checkpoint(tmp_path / "ck.pt"), fresh)
    assert fresh[0].unit.n_basis == model[0].unit.n_basis == 3 and fresh[0].n_steps == 4
    x = state((3, 4))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
