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
    # the norm's statistics: one set per cell, each the module's
    assert m.module.bn.running_mean.shape == (2, 4)
    assert torch.equal(m.module.bn.running_mean[1], module.bn.running_mean)
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
        norm = block.unit.module[1]
        norm.reset_running_stats()
        out = block(x)
        grads[mode] = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
        stats = norm.running_mean.clone()
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


# -- the contract: a copy, the module left as it was ------------------------------------


def test_the_module_is_left_as_it_was_and_converts_again():
    module = mlp_branch(4).double()
    x = state((3, 4))
    ref = module(x)
    params = [(p, p.detach().clone()) for p in module.parameters()]
    first = contnet.time_dependent(module, n_basis=2)
    # the user's module still runs, with its own parameters, unchanged
    torch.testing.assert_close(module(x), ref, rtol=0, atol=0)
    assert all(p is q for (p, _), q in zip(params, module.parameters()))
    assert all(torch.equal(p, v) for p, v in params)
    # a second conversion is another copy; neither shares a tensor with the module
    second = contnet.time_dependent(module, n_basis=3, basis="fem_linear")
    for m, t in ((first, 0.9), (second, 0.5)):
        torch.testing.assert_close(m(t, x), ref, rtol=1e-15, atol=1e-15)
    ids = {id(p) for p in module.parameters()}
    assert not ids & {id(p) for p in (*first.parameters(), *second.parameters())}
    with pytest.raises(ValueError, match="already time-dependent"):
        contnet.time_dependent(first)


def test_a_module_with_weight_norm_hooks_is_copied():
    # torch.nn.utils.weight_norm keeps a computed weight as a plain attribute, which
    # copy.deepcopy refuses; the copy recomputes it from the expanded g and v at each call
    with pytest.warns(FutureWarning):
        module = nn.utils.weight_norm(nn.Linear(4, 4).double())
    x = state((3, 4))
    ref = module(x)
    m = contnet.time_dependent(module, n_basis=2)
    assert {n for n, _ in m.named_parameters()} == {
        "module.bias",
        "module.weight_g",
        "module.weight_v",
    }
    torch.testing.assert_close(m(0.7, x), ref, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(module(x), ref, rtol=0, atol=0)


def test_lazy_modules_are_refused_until_materialized():
    with pytest.raises(ValueError, match="lazy"):
        contnet.time_dependent(nn.LazyLinear(4))
    with pytest.raises(TypeError, match="residual_check must be True or False"):
        contnet.time_dependent(nn.Linear(2, 2), residual_check="yes")


# -- layouts --------------------------------------------------------------------------


def test_channels_last_reaches_every_node_of_a_users_conv_branch():
    branch = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.GELU(), nn.Conv2d(6, 4, 1))
    model = nn.Sequential(
        contnet.ContinuousBlock(contnet.time_dependent(branch, n_basis=2), n_steps=2),
        nn.Conv2d(4, 4, 1),
    ).double()
    x = state((2, 4, 5, 5))
    ref = model(x)
    model[0].unit.module[0].weight.grad = torch.ones_like(model[0].unit.module[0].weight)
    weight = model[0].unit.module[0].weight
    model.to(memory_format=torch.channels_last)
    assert model[0].unit.module[0].weight is weight  # the parameter is kept
    for stack in (weight, weight.grad, model[0].unit.module[2].weight):
        assert stack.dim() == 5
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in stack)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # a 1-d convolution's stack keeps its layout, as torch keeps a Conv1d weight's
    conv1d = contnet.time_dependent(nn.Conv1d(3, 3, 3), n_basis=2)
    conv1d.to(memory_format=torch.channels_last)
    assert conv1d.module.weight.is_contiguous()
    conv3d = contnet.time_dependent(nn.Conv3d(2, 2, 3), n_basis=2)
    conv3d.to(memory_format=torch.channels_last_3d)
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in conv3d.module.weight)


# -- norms with running statistics: one set per cell ------------------------------------


def _bn_branch():
    return nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh()).double()


def test_batch_norm_statistics_are_kept_per_cell():
    branch = _bn_branch()
    block = contnet.ContinuousBlock(contnet.time_dependent(branch, n_basis=2), scheme="euler")
    norm = block.unit.module[1]
    assert norm.running_mean.shape == (2, 3) and norm.num_batches_tracked.shape == (2,)
    x = state((4, 3, 5, 5))
    block(x)  # euler, 2 steps: one stage in each cell
    assert norm.num_batches_tracked.tolist() == [1, 1]
    # cell 0 saw x; cell 1 the state after the first step: their statistics differ
    branch.train()
    with torch.no_grad():
        branch(x)  # the same update from the same start, by the module itself
    torch.testing.assert_close(norm.running_mean[0], branch[1].running_mean)
    assert not torch.allclose(norm.running_mean[1], norm.running_mean[0])
    # eval: each cell normalises with its own statistics, as the module would with them
    block.eval()
    branch.eval()
    with torch.no_grad():
        y = block(x)
        branch[1].running_mean.copy_(norm.running_mean[1])
        branch[1].running_var.copy_(norm.running_var[1])
        h = x + 0.5 * block.unit(0.25, x)
        torch.testing.assert_close(y, h + 0.5 * branch(h), rtol=1e-12, atol=1e-12)
    assert block.unit.module[1].num_batches_tracked.tolist() == [1, 1]


def test_batch_norm_cells_follow_refinement_and_projection():
    block = contnet.ContinuousBlock(contnet.time_dependent(_bn_branch(), n_basis=2), n_steps=4)
    x = state((4, 3, 5, 5))
    block(x)
    norm = block.unit.module[1]
    before = norm.running_mean.clone(), norm.num_batches_tracked.clone()
    block.eval()
    with torch.no_grad():
        y = block(x)
        contnet.refine(block, steps=False)
        assert norm is block.unit.module[1] and norm.running_mean.shape == (4, 3)
        torch.testing.assert_close(norm.running_mean, before[0].repeat_interleave(2, 0))
        assert norm.num_batches_tracked.tolist() == before[1].repeat_interleave(2).tolist()
        torch.testing.assert_close(block(x), y, rtol=1e-12, atol=1e-12)  # exact
        contnet.project(block, 1)
    torch.testing.assert_close(norm.running_mean[0], before[0].mean(0))
    assert norm.num_batches_tracked.tolist() == [round(before[1].double().mean().item())]


def test_a_legendre_or_fem_basis_keeps_statistics_per_polynomial_piece():
    for basis, K, cells in (("legendre", 3, 1), ("fem_linear", 3, 2)):
        m = contnet.time_dependent(_bn_branch(), n_basis=K, basis=basis)
        assert m.module[1].running_var.shape == (cells, 3)


def test_statistics_round_trip_a_state_dict_and_a_checkpoint(tmp_path):
    from contnet.training import load_checkpoint, load_model_state, save_checkpoint

    def build():
        torch.manual_seed(0)
        return contnet.ContinuousBlock(contnet.time_dependent(_bn_branch(), n_basis=2))

    block = build()
    block(state((4, 3, 5, 5)))
    contnet.refine(block)
    block(state((4, 3, 5, 5), seed=1))
    save_checkpoint(tmp_path / "ck.pt", block)
    fresh = load_model_state(load_checkpoint(tmp_path / "ck.pt"), build())
    for (n, a), (_, b) in zip(block.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n


def test_odd_devices_modes_and_layouts_after_refinement():
    # the first call on the meta device (shape inference) runs; the copy takes the
    # module's mode; channels_last filter banks stay so through refinement and projection
    m = contnet.time_dependent(mlp_branch(4)).to("meta")
    assert m(0.5, torch.empty(2, 4, device="meta")).shape == (2, 4)
    assert not contnet.time_dependent(mlp_branch(4).eval()).training
    conv = contnet.time_dependent(nn.Conv2d(3, 3, 3, padding=1), n_basis=2)
    conv.to(memory_format=torch.channels_last)
    contnet.refine(conv)
    contnet.project(conv, 2)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv.module.weight)


class _TwoUses(nn.Module):
    """One Linear under two names (a submodule reused), applied twice."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.again = self.lin

    def forward(self, x):
        return torch.tanh(self.again(torch.tanh(self.lin(x))))


def test_a_submodule_used_under_two_names_keeps_its_stacks_across_calls():
    """What a user's audit found: a call left such a module holding one node's weights in
    place of its stacks (torch's tie_weights swapped the shared parameter under both names
    and restored it wrongly); the next call failed."""
    torch.manual_seed(0)
    module = _TwoUses().double()
    td = contnet.time_dependent(module, n_basis=3)
    x = torch.randn(4, 6, dtype=torch.float64)
    first = td(0.5, x)
    assert [tuple(p.shape) for p in td.parameters()] == [(3, 6, 6), (3, 6)]
    assert td.module.lin is td.module.again and td.module.lin.weight.shape == (3, 6, 6)
    torch.testing.assert_close(td(0.5, x), first, rtol=0, atol=0)
    torch.testing.assert_close(first, module(x), rtol=0, atol=0)
    branches = [_TwoUses().double() for _ in range(3)]
    block = contnet.from_branches(branches, x)
    y = x
    for b in branches:
        y = y + b(y)
    torch.testing.assert_close(block(x), y, rtol=1e-12, atol=1e-12)
