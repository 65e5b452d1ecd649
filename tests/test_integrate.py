import pytest
import torch
from torch import nn

import contnet

RK = contnet.schemes.names()[:8]


class TimeLinear(nn.Module):
    """A small rate tanh(W(t) x + c(t)) with fem_linear weights in depth."""

    def __init__(self, d=4, K=3):
        super().__init__()
        self.basis = contnet.basis.get("fem_linear", K)
        self.w = nn.Parameter(torch.randn(K, d, d, dtype=torch.float64) / d**0.5)
        self.c = nn.Parameter(torch.randn(K, d, dtype=torch.float64))

    def forward(self, t, x):
        phi = self.basis([t])[0]
        w = torch.einsum("k,kij->ij", phi, self.w)
        return torch.tanh(x @ w.T + phi @ self.c)


@pytest.mark.parametrize("scheme", RK + ["ab2"])
def test_gradcheck_through_odeint(scheme):
    f = TimeLinear()
    x0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def run(x, w, c):
        with torch.nn.utils.stateless._reparametrize_module(f, {"w": w, "c": c}):
            return contnet.odeint(f, x, scheme=scheme, n_steps=3)

    assert torch.autograd.gradcheck(
        run, (x0, f.w.detach().requires_grad_(), f.c.detach().requires_grad_())
    )


def test_trajectory_and_reverse_time():
    f = TimeLinear()
    x0 = torch.randn(3, 4, dtype=torch.float64)
    path = contnet.odeint(f, x0, scheme="rk4", n_steps=8, trajectory=True)
    assert path.shape == (9, 3, 4)
    torch.testing.assert_close(path[0], x0)
    torch.testing.assert_close(path[-1], contnet.odeint(f, x0, scheme="rk4", n_steps=8))
    # integrating forward and back from t=1 to t=0 recovers x0 up to the scheme's error
    with torch.no_grad():
        x1 = contnet.odeint(f, x0, scheme="rk4", n_steps=200)
        back = contnet.odeint(f, x1, scheme="rk4", n_steps=200, t0=1.0, t1=0.0)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-8)


def test_rate_receives_open_interval_times():
    seen = []

    def f(t, x):
        seen.append(t)
        return x

    contnet.odeint(f, torch.randn(2), scheme="heun", n_steps=2)
    assert seen[0] == 0.0 and seen[2] == 0.5
    assert 0.5 - 1e-15 < seen[1] < 0.5 and 1 - 1e-15 < seen[3] < 1.0


def test_errors_name_the_argument():
    f = lambda t, x: x  # noqa: E731
    x = torch.randn(3)
    with pytest.raises(ValueError, match="unknown scheme 'rk9'"):
        contnet.odeint(f, x, scheme="rk9")
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        contnet.odeint(f, x, n_steps=0)
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        contnet.odeint(f, torch.arange(3))
    with pytest.raises(TypeError, match="f must be callable"):
        contnet.odeint(3, x)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        contnet.odeint(lambda t, x: x[:2], x)
    for scheme in ("euler", "rk4", "ab2"):  # not a tensor of uninitialised memory
        with pytest.raises(ValueError, match="must return a tensor on x's device cpu, got meta"):
            contnet.odeint(lambda t, x: x.to("meta"), x, scheme=scheme)

    class Split:  # a rate with a fusable tail, scale * act(y + bias)
        def __call__(self, t, x):
            return x

        def split(self, t, x):
            return x.to("meta"), None, "identity", 1.0

    with pytest.raises(ValueError, match="on x's device cpu, got meta"):
        contnet.odeint(Split(), x.view(1, 3, 1, 1), scheme="rk4")
    with pytest.raises(ValueError, match="unknown backprop 'magic'"):
        contnet.odeint(f, x, backprop="magic")
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        contnet.odeint(f, x, t0=0.5, t1=0.5)


def test_a_rate_of_a_wider_dtype_is_refused_at_its_first_stage():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    for scheme in ("euler", "rk4", "ab2", "lm"):
        kw = {"lm_k": torch.zeros(2)} if scheme == "lm" else {}
        with pytest.raises(
            TypeError, match="x's dtype torch.float32 .* got torch.float64 at t=0.0"
        ):
            contnet.odeint(lambda t, x: lin(x).double(), x, scheme=scheme, n_steps=2, **kw)

    class Split:  # the fused path: a pre-tail output of a wider dtype
        def __call__(self, t, x):
            return x

        def split(self, t, x):
            return x.double(), None, "identity", 1.0

    with pytest.raises(TypeError, match="x's dtype torch.float32"):
        contnet.odeint(Split(), x.view(2, 4, 1, 1), scheme="rk4")
    # a narrower rate is promoted to the state's dtype, as under autocast
    y = contnet.odeint(lambda t, x: lin(x).half(), x, scheme="rk4", n_steps=2)
    assert y.dtype == torch.float32


def test_a_block_takes_one_positional_argument():
    block = contnet.ContinuousBlock(contnet.MLPUnit(4))
    with pytest.raises(TypeError, match="one positional argument, the state x, got 2: pass the"):
        block(torch.randn(2, 4), torch.ones(2, 4))


def test_a_rate_of_integers_is_refused():
    for scheme in ("rk4", "euler", "ab2"):
        with pytest.raises(TypeError, match="must return a floating-point tensor, got torch.int64"):
            contnet.odeint(
                lambda t, x: torch.tanh(x).to(torch.int64), torch.randn(3), scheme=scheme
            )
