import math

import pytest
import torch

from contnet import basis

CASES = [
    ("piecewise_constant", 1),
    ("piecewise_constant", 3),
    ("piecewise_constant", 8),
    ("fem_linear", 2),
    ("fem_linear", 5),
    ("piecewise_linear", 2),
    ("piecewise_linear", 6),
    ("legendre", 1),
    ("legendre", 4),
]


def _times(b, n=200):
    """Random times plus every piece edge and the float just below each edge."""
    edges = b.breakpoints()
    below = [math.nextafter(e, 0.0) for e in edges[1:]]
    return torch.rand(n, dtype=torch.float64).tolist() + edges + below


def test_names():
    assert basis.names() == ["piecewise_constant", "fem_linear", "piecewise_linear", "legendre"]


def test_piecewise_constant_cell_rule():
    K = 7
    b = basis.get("piecewise_constant", K)
    for t in torch.rand(500, dtype=torch.float64).tolist() + [0.0, 1.0, 3 / 7, 6 / 7]:
        assert b.coefficients(t) == ((min(math.floor(t * K), K - 1), 1.0),)
    # the float just below an edge belongs to the cell on its left
    assert b.coefficients(math.nextafter(3 / 7, 0.0))[0][0] == 2


@pytest.mark.parametrize("family,K", CASES)
def test_partition_of_unity_and_nodes(family, K):
    b = basis.get(family, K)
    phi = b(_times(b))
    if family != "legendre":
        torch.testing.assert_close(phi.sum(1), torch.ones(phi.shape[0], dtype=torch.float64))
    if family in ("piecewise_constant", "fem_linear"):
        torch.testing.assert_close(b(b.nodes()), torch.eye(K, dtype=torch.float64))
    theta = torch.randn(K, 3, dtype=torch.float64)
    vals = b(b.nodes()) @ theta
    torch.testing.assert_close(b(b.nodes()) @ b.from_values(vals), vals)


def test_legendre_values():
    b = basis.get("legendre", 4)
    t = torch.rand(50, dtype=torch.float64)
    x = 2 * t - 1
    expect = torch.stack([torch.ones_like(x), x, (3 * x**2 - 1) / 2, (5 * x**3 - 3 * x) / 2], 1)
    torch.testing.assert_close(b(t), expect)


@pytest.mark.parametrize("family,K", CASES)
def test_refinement_is_exact(family, K):
    b = basis.get(family, K)
    fine = b.refined()
    assert fine.family == family and fine.n_basis == (
        2 * K - 1 if family == "fem_linear" else 2 * K
    )
    theta = torch.randn(K, 4, 2, dtype=torch.float64)
    theta_fine = b.refine(theta)
    assert theta_fine.shape == (fine.n_basis, 4, 2)
    ts = _times(fine)
    torch.testing.assert_close(
        fine(ts) @ theta_fine.reshape(fine.n_basis, -1),
        b(ts) @ theta.reshape(K, -1),
        rtol=1e-12,
        atol=1e-12,
    )
    # refinement is the projection onto the finer space
    torch.testing.assert_close(b.projection_matrix(fine), b.refine_matrix(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family,K", CASES)
def test_projection_is_identity_on_its_own_space(family, K):
    b = basis.get(family, K)
    torch.testing.assert_close(
        b.projection_matrix(b), torch.eye(K, dtype=torch.float64), rtol=1e-10, atol=1e-10
    )


def test_piecewise_constant_8_to_4_is_pairwise_mean():
    theta = torch.randn(8, 3, 3, dtype=torch.float64)
    out = basis.get("piecewise_constant", 8).project(theta, basis.get("piecewise_constant", 4))
    torch.testing.assert_close(out, 0.5 * (theta[0::2] + theta[1::2]))


@pytest.mark.parametrize(
    "src,dst,degree",
    [
        (("legendre", 4), ("fem_linear", 3), 1),  # a line, held in a cubic basis
        (("legendre", 5), ("legendre", 3), 2),  # a quadratic
        (("fem_linear", 9), ("piecewise_linear", 2), 1),
        (("legendre", 3), ("piecewise_linear", 8), 1),
        (("legendre", 2), ("piecewise_constant", 5), 0),
    ],
)
def test_projection_is_exact_on_polynomials_of_the_target(src, dst, degree):
    s, d = basis.get(*src), basis.get(*dst)
    coef = torch.randn(degree + 1, dtype=torch.float64)

    def poly(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return sum(c * t**i for i, c in enumerate(coef))

    # the polynomial's coefficients in the source basis (least squares on many points)
    pts = torch.rand(400, dtype=torch.float64)
    theta_src = torch.linalg.lstsq(s(pts), poly(pts)[:, None]).solution
    torch.testing.assert_close(s(pts) @ theta_src, poly(pts)[:, None], rtol=1e-9, atol=1e-9)
    theta_dst = s.project(theta_src, d)
    ts = _times(d)
    torch.testing.assert_close(d(ts) @ theta_dst, poly(ts)[:, None], rtol=1e-9, atol=1e-9)


def test_projection_residual_is_orthogonal():
    s, d = basis.get("legendre", 6), basis.get("fem_linear", 4)
    theta = torch.randn(6, 1, dtype=torch.float64)
    resid = lambda t: s(t) @ theta - d(t) @ s.project(theta, d)  # noqa: E731
    # integrate resid * phi_i with a fine composite midpoint rule
    n = 20000
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    inner = (d(t) * resid(t)).sum(0) / n
    assert inner.abs().max() < 1e-7


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="unknown basis 'cubic'"):
        basis.get("cubic", 2)
    with pytest.raises(ValueError, match="fem_linear' must be >= 2"):
        basis.get("fem_linear", 1)
    with pytest.raises(ValueError, match="piecewise_linear' must be even"):
        basis.get("piecewise_linear", 3)
    with pytest.raises(ValueError, match="n_basis must be >= 1"):
        basis.get("legendre", 0)
    with pytest.raises(TypeError, match="n_basis must be an int"):
        basis.get("legendre", 2.0)
    with pytest.raises(ValueError, match="nodes along dim 0"):
        basis.get("legendre", 3).refine(torch.randn(2, 2))
