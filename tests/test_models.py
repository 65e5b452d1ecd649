import pytest
import torch
import torch.nn.functional as F

import contnet
from contnet import basis

from .helpers import randomise_norms

FAMILIES = [("piecewise_constant", 2), ("fem_linear", 2), ("piecewise_linear", 2), ("legendre", 2)]


def _block(family, K, norm="batch", scheme="rk4", n_steps=4):
    unit = contnet.ConvUnit(3, n_basis=K, basis=family, norm=norm, act="tanh").double()
    randomise_norms(unit)
    return contnet.ContinuousBlock(unit, scheme=scheme, n_steps=n_steps).eval()


def test_block_attributes_are_settable_and_checked():
    block = contnet.ContinuousBlock(contnet.ConvUnit(4, n_basis=3))
    assert block.n_steps == 3 and block.scheme == "rk4"
    block.scheme, block.n_steps = "euler", 12
    assert "scheme=euler, n_steps=12" in repr(block)
    with pytest.raises(ValueError, match="unknown scheme 'rk5'"):
        block.scheme = "rk5"
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        block.n_steps = 0
    with pytest.raises(ValueError, match="n_steps is required"):
        contnet.ContinuousBlock(lambda t, x: x)


@pytest.mark.parametrize("norm", [None, "batch"])
def test_gradcheck_through_block(norm):
    block = _block("fem_linear", 3, norm=norm, scheme="midpoint", n_steps=2)
    block.train(norm is None)
    names = [n for n, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)

    def run(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize("family,K", FAMILIES)
@pytest.mark.parametrize("scheme", ["euler", "rk4", "ssprk3"])
def test_refinement_keeps_theta_and_output(family, K, scheme):
    block = _block(family, K, scheme=scheme, n_steps=4)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    conv = block.unit.conv1
    ts = torch.rand(50).tolist()
    before_theta = [conv.weight_at(t)[0].clone() for t in ts]
    with torch.no_grad():
        before = block(x)
    contnet.refine(block, steps=False)
    assert block.unit.n_basis == basis.get(family, K).refined().n_basis and block.n_steps == 4
    for t, w in zip(ts, before_theta):
        torch.testing.assert_close(conv.weight_at(t)[0], w, rtol=1e-13, atol=1e-13)
    with torch.no_grad():
        torch.testing.assert_close(block(x), before, rtol=1e-12, atol=1e-12)


def test_refinement_doubles_steps_with_cells():
    """piecewise constant, euler, n_steps doubled with K: the refined block equals the
    original evaluated at the doubled step count."""
    block = _block("piecewise_constant", 2, scheme="euler", n_steps=2)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        block.n_steps = 4
        at_double = block(x)
        block.n_steps = 2
        contnet.refine(block)
        assert (block.unit.n_basis, block.n_steps) == (4, 4)
        torch.testing.assert_close(block(x), at_double, rtol=0, atol=1e-14)


def test_refine_maps_optimizer_state_exactly():
    torch.manual_seed(0)
    net = contnet.ContinuousNet(1, 4, widths=(4, 8), n_basis=1).double()
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    maps = contnet.refine(net, optimizer=opt)
    w = net.stages[0].unit.conv1.weight
    assert w in maps and w.shape[0] == 2
    buf = opt.state[w]["momentum_buffer"]
    assert buf.shape == w.shape
    torch.testing.assert_close(buf[0], buf[1])


@pytest.mark.parametrize(
    "opt_cls", [torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Rprop]
)
def test_projection_keeps_second_moments_non_negative(opt_cls):
    # an L2 projection onto fem_linear nodes has negative weights: second moments mapped by
    # it would turn negative and Adam's next step NaN
    net = contnet.ContinuousNet(1, 4, widths=(4,), n_basis=5, basis="fem_linear").double()
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    kw = {"amsgrad": True} if opt_cls is torch.optim.Adam else {}
    opt = opt_cls(net.parameters(), lr=1e-2, **kw)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    maps = contnet.project(net, 3, optimizer=opt)
    assert any((P < 0).any() for P in maps.values())
    w = net.stages[0].unit.conv1.weight
    nonneg = {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "step_size"}
    assert nonneg & set(opt.state[w])
    for key in nonneg & set(opt.state[w]):
        assert (opt.state[w][key] >= 0).all(), key
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_projection_identity_and_pairwise_means():
    block = _block("piecewise_constant", 8)
    w = block.unit.conv1.weight.detach().clone()
    rm = block.unit.norm1.running_mean.clone()
    contnet.project(block, 8)
    torch.testing.assert_close(block.unit.conv1.weight, w)
    contnet.project(block, 4)
    torch.testing.assert_close(block.unit.conv1.weight, 0.5 * (w[0::2] + w[1::2]))
    torch.testing.assert_close(block.unit.norm1.running_mean, 0.5 * (rm[0::2] + rm[1::2]))
    contnet.project(block, 3, "fem_linear")
    assert block.unit.basis == basis.get("fem_linear", 3) and block.unit.norm1.n_basis == 2


def test_projection_onto_another_family_is_exact_for_its_polynomials():
    block = _block("legendre", 2)  # theta(t) linear in t: held exactly by fem_linear(2)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    block.unit.norm1 = block.unit.norm2 = None
    with torch.no_grad():
        before = block(x)
        contnet.project(block, 2, "fem_linear")
        torch.testing.assert_close(block(x), before, rtol=1e-12, atol=1e-12)


def test_continuous_net_manifestations_converge():
    net = contnet.ContinuousNet(
        1, 10, widths=(4, 8), n_basis=2, basis="fem_linear", act="tanh"
    ).double()
    randomise_norms(net)
    net.eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        net.set_manifestation("rk4", 64)
        fine = net(x)
        drift = {}
        for n in (2, 4, 8, 16):
            net.set_manifestation("euler", n)
            drift[n] = (net(x) - fine).abs().max().item()
    assert drift[16] < drift[8] < drift[4] < drift[2]
    assert drift[2] / drift[16] > 4  # first order: about 8


def test_continuous_net_errors():
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\) for in_channels=3"):
        contnet.ContinuousNet()(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="widths must name"):
        contnet.ContinuousNet(widths=())
    with pytest.raises(ValueError, match="unknown norm"):
        contnet.ContinuousNet(norm="group")


def test_refine_and_project_take_the_steps_with_the_nodes_and_say_what_they_did():
    net = contnet.ContinuousNet(1, 4, widths=(4, 8), n_basis=2)
    blocks = contnet.block.blocks_of(net)
    blocks[1].n_steps = 6  # its own, not one per node
    change = contnet.refine(net)
    assert [b.n_steps for b in blocks] == [4, 12]
    assert (
        repr(change) == "BasisChange(refined 20 tensors, n_basis 2 -> 4, n_steps [2, 6] -> [4, 12])"
    )
    change = contnet.project(net, 2)  # the same rule: steps scale with the nodes
    assert [b.n_steps for b in blocks] == [2, 6] and blocks[0].unit.n_basis == 2
    assert "projected" in repr(change) and "tensor(" not in repr(change)
    w = blocks[0].unit.conv1.weight
    assert w in change and change[w].shape == (2, 4) and len(change) == 20
    contnet.project(net, 1, steps=False)
    contnet.refine(net, steps=False)
    assert [b.n_steps for b in blocks] == [2, 6]
    contnet.project(net, 1)  # 2 -> 1 nodes: half the steps, at least one
    assert [b.n_steps for b in blocks] == [1, 3]


def test_refine_and_project_check_steps():
    net = contnet.ContinuousNet(1, 4, widths=(4,), n_basis=2)
    for bad in ("no", 0, None, 4):
        with pytest.raises(TypeError, match="steps must be True or False"):
            contnet.refine(net, steps=bad)
        with pytest.raises(TypeError, match="steps must be True or False"):
            contnet.project(net, 1, steps=bad)
    assert net.stages[0].unit.n_basis == 2 and net.stages[0].n_steps == 2


def test_an_optimizer_with_factored_state_follows_the_nodes_or_is_refused():
    # Adafactor keeps per-row and per-column second moments of a matrix: those along the
    # nodes are mapped, those shared by every node kept; the next step runs
    torch.manual_seed(0)
    block = contnet.ContinuousBlock(contnet.MLPUnit(4, hidden=8, n_basis=2), n_steps=2)
    opt = torch.optim.Adafactor(block.parameters(), lr=1e-2)
    x = torch.randn(8, 4)
    block(x).square().mean().backward()
    opt.step()
    contnet.refine(block, optimizer=opt)
    for p in block.parameters():
        for k, v in opt.state[p].items():
            assert v.dim() == 0 or v.shape[0] in (1, p.shape[0]), k
            assert (v >= 0).all() or k not in ("row_var", "col_var", "variance"), k
    block.zero_grad()
    block(x).square().mean().backward()
    opt.step()
    # state that follows no node layout is refused before anything changes
    p = next(block.parameters())
    opt.state[p]["odd"] = torch.zeros(3)
    weights = [q for q in block.parameters()]
    with pytest.raises(ValueError, match="holds state 'odd' of shape \\(3,\\)"):
        contnet.refine(block, optimizer=opt)
    assert all(a is b for a, b in zip(weights, block.parameters())) and block.n_steps == 4


def test_a_parametrized_weight_is_refused_and_the_module_left_as_it_was():
    from torch.nn.utils import parametrizations

    for attach in (parametrizations.weight_norm, parametrizations.spectral_norm):
        unit = contnet.ConvUnit(4, n_basis=2)
        attach(unit.conv1)
        block = contnet.ContinuousBlock(unit, n_steps=2)
        before = {n: p.detach().clone() for n, p in block.named_parameters()}
        for change, args in ((contnet.refine, ()), (contnet.project, (1,))):
            with pytest.raises(ValueError, match="computed by a parametrization or a hook"):
                change(block, *args)
            assert unit.n_basis == 2 and block.n_steps == 2
            for n, p in block.named_parameters():
                assert torch.equal(p, before[n]), n


def test_lbfgs_follows_a_refinement_before_its_first_step_and_is_refused_after():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6),
        contnet.ContinuousBlock(contnet.MLPUnit(6, hidden=8, n_basis=2), n_steps=2),
        torch.nn.Linear(6, 2),
    )
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    contnet.refine(model, optimizer=opt)  # no state yet: its parameter list follows in place
    before = [p.detach().clone() for p in model[1].parameters()]
    opt.step(closure)
    assert all(not torch.equal(a, p) for a, p in zip(before, model[1].parameters()))
    with pytest.raises(ValueError, match="state kept across its parameters"):
        contnet.refine(model, optimizer=opt)  # its history is flat over every parameter
    assert model[1].unit.n_basis == 4
    with pytest.raises(ValueError, match="holds none of the parameters"):
        contnet.refine(model, optimizer=torch.optim.SGD(model[0].parameters(), lr=0.1))
