"""Basis functions in depth: ``theta(t) = sum_k phi_k(t) theta_k`` on ``t in [0, 1]``.

Pure math; nothing here knows about ``nn.Module``. A basis is a small immutable value
(family name and number of nodes ``K``). It evaluates its functions at times, refines
itself exactly (the finer space contains the coarser one, ``theta_fine = R @ theta``) and
projects onto any other basis by the L2-orthogonal projection on ``[0, 1]``, with mass
matrices integrated exactly by Gauss-Legendre quadrature on every piece.

Families:

- ``piecewise_constant``: ``K`` cells ``[k/K, (k+1)/K)``; ``t`` reads cell
  ``min(floor(t K), K - 1)``. Refines ``K -> 2K`` by splitting every cell.
- ``fem_linear``: continuous hat functions on ``K >= 2`` equispaced nodes ``k/(K-1)``.
  Refines ``K -> 2K - 1`` by inserting midpoints.
- ``piecewise_linear``: discontinuous, linear on each of ``K/2`` cells (``K`` even), with
  the values at the cell's two ends as nodes. Refines ``K -> 2K``.
- ``legendre``: global polynomials ``P_k(2t - 1)``, ``k < K``. Refines ``K -> 2K``.

Times outside ``[0, 1]`` are clamped to it. Evaluation of one time is plain Python on
floats, so it costs no tensor work in a forward pass and traces as constants under
``torch.compile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["Basis", "get", "names", "FAMILIES"]

FAMILIES = ("piecewise_constant", "fem_linear", "piecewise_linear", "legendre")


def names() -> list[str]:
    return list(FAMILIES)


def _cell(t: float, n: int) -> int:
    """Index ``k`` of the cell ``[k/n, (k+1)/n)`` that holds ``t``, clamped to ``[0, n-1]``.

    Edges are the correctly rounded floats ``k/n``, compared exactly, so a time equal to an
    edge (as stage times are when they meet one) falls in the cell to its right, and the
    float just below an edge in the cell to its left.
    """
    k = min(max(int(t * n), 0), n - 1)
    while k + 1 < n and (k + 1) / n <= t:
        k += 1
    while k > 0 and k / n > t:
        k -= 1
    return k


def _clamp01(t: float) -> float:
    return 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)


@dataclass(frozen=True)
class Basis:
    """``K = n_basis`` basis functions of one family on ``[0, 1]``; see the module doc."""

    family: str
    n_basis: int

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown basis {self.family!r}; expected one of {list(FAMILIES)}")
        k = self.n_basis
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"n_basis must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"n_basis must be >= 1, got {k}")
        if self.family == "fem_linear" and k < 2:
            raise ValueError(
                f"n_basis for basis 'fem_linear' must be >= 2 (two end nodes), got {k}"
            )
        if self.family == "piecewise_linear" and k % 2:
            raise ValueError(
                f"n_basis for basis 'piecewise_linear' must be even (2 nodes per cell), got {k}"
            )

    @property
    def name(self) -> str:
        return self.family

    @property
    def degree(self) -> int:
        """Polynomial degree on each piece."""
        return {"piecewise_constant": 0, "fem_linear": 1, "piecewise_linear": 1}.get(
            self.family, self.n_basis - 1
        )

    @property
    def n_cells(self) -> int:
        """Number of polynomial pieces."""
        return {
            "piecewise_constant": self.n_basis,
            "fem_linear": self.n_basis - 1,
            "piecewise_linear": self.n_basis // 2,
        }.get(self.family, 1)

    def breakpoints(self) -> list[float]:
        """Edges of the polynomial pieces, ``0`` and ``1`` included."""
        n = self.n_cells
        return [k / n for k in range(n + 1)]

    def jumps_and_kinks(self) -> tuple[list[float], list[float]]:
        """The interior edges of the pieces as ``(jumps, kinks)``: where ``theta(t)`` jumps
        (``piecewise_constant``, ``piecewise_linear``) or only its slope does
        (``fem_linear``); ``legendre`` has none. Adaptive steps land on them."""
        inner = self.breakpoints()[1:-1]
        if self.family == "fem_linear":
            return [], inner
        return (inner if self.family != "legendre" else []), []

    # ------------------------------------------------------------------ evaluation
    def coefficients(self, t: float) -> tuple[tuple[int, float], ...]:
        """Non-zero ``(k, phi_k(t))`` pairs at one time (plain floats)."""
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"t must be a finite time, got {t}")
        t = _clamp01(t)
        fam, K = self.family, self.n_basis
        if fam == "piecewise_constant":
            return ((_cell(t, K), 1.0),)
        if fam == "fem_linear":
            j = _cell(t, K - 1)
            s = t * (K - 1) - j
            return ((j, 1.0 - s), (j + 1, s))
        if fam == "piecewise_linear":
            j = _cell(t, K // 2)
            s = t * (K // 2) - j
            return ((2 * j, 1.0 - s), (2 * j + 1, s))
        # legendre: Bonnet's recurrence on x = 2t - 1
        x = 2.0 * t - 1.0
        vals = [1.0, x][:K]
        for n in range(1, K - 1):
            vals.append(((2 * n + 1) * x * vals[n] - n * vals[n - 1]) / (n + 1))
        return tuple(enumerate(vals))

    def __call__(self, times) -> torch.Tensor:
        """``phi[s, k] = phi_k(times[s])`` as a float64 tensor of shape ``(S, K)``."""
        try:
            ts = torch.as_tensor(times, dtype=torch.float64, device="cpu").reshape(-1).tolist()
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"times must be a sequence of real numbers, got {times!r}") from e
        if not all(map(math.isfinite, ts)):
            raise ValueError(f"times must be finite, got {times!r}")
        out = torch.zeros(len(ts), self.n_basis, dtype=torch.float64, device="cpu")
        for s, t in enumerate(ts):
            for k, w in self.coefficients(t):
                out[s, k] += w
        return out

    evaluate = __call__

    def nodes(self) -> torch.Tensor:
        """Location in ``[0, 1]`` of each coefficient, shape ``(K,)``.

        Nodal families hold ``theta`` at these points (cell centres for
        ``piecewise_constant``; the two ends of every cell for ``piecewise_linear``, the right
        one read from inside the cell). ``legendre`` is modal; its nodes are the ``K``
        Gauss-Legendre points, at which the values determine the coefficients.
        """
        fam, K = self.family, self.n_basis
        if fam == "piecewise_constant":
            return (torch.arange(K, dtype=torch.float64, device="cpu") + 0.5) / K
        if fam == "fem_linear":
            return torch.arange(K, dtype=torch.float64, device="cpu") / (K - 1)
        if fam == "piecewise_linear":
            c = torch.arange(K // 2, dtype=torch.float64, device="cpu")
            return torch.stack([c, c + 1], 1).reshape(-1) / (K // 2)
        return torch.from_numpy((np.polynomial.legendre.leggauss(K)[0] + 1.0) / 2.0)

    def from_values(self, values: torch.Tensor) -> torch.Tensor:
        """Coefficients whose ``theta`` takes ``values[k]`` at ``nodes()[k]`` (first dim K)."""
        if self.family != "legendre":
            return values
        vander = self(self.nodes()).to(device=values.device, dtype=values.dtype)
        flat = values.reshape(self.n_basis, -1)
        return torch.linalg.solve(vander, flat).reshape(values.shape)

    def constant(self, value: torch.Tensor) -> torch.Tensor:
        """Coefficients of ``theta(t) = value`` for every ``t`` (a stack of ``K`` along a
        new first dimension), exact: ``value`` at every node of a nodal family, ``value``
        and zeros for ``legendre`` (``P_0 = 1``)."""
        stack = value.unsqueeze(0).expand((self.n_basis,) + tuple(value.shape))
        if self.family != "legendre":
            return stack.clone()
        return torch.cat([value.unsqueeze(0), torch.zeros_like(stack[1:])])

    # ------------------------------------------------------------------ refinement
    def refined(self) -> Basis:
        """The next finer space of the family (contains this one)."""
        K = self.n_basis
        return Basis(self.family, 2 * K - 1 if self.family == "fem_linear" else 2 * K)

    def refine_matrix(self) -> torch.Tensor:
        """``R`` (float64, ``K_fine x K``) with ``theta_fine = R @ theta`` and the same ``theta(t)``."""
        fam, K = self.family, self.n_basis
        Kf = self.refined().n_basis
        R = torch.zeros(Kf, K, dtype=torch.float64, device="cpu")
        if fam == "piecewise_constant":
            for k in range(K):
                R[2 * k, k] = R[2 * k + 1, k] = 1.0
        elif fam == "fem_linear":
            for k in range(K):
                R[2 * k, k] = 1.0
            for k in range(K - 1):
                R[2 * k + 1, k] = R[2 * k + 1, k + 1] = 0.5
        elif fam == "piecewise_linear":
            for j in range(K // 2):
                a, b = 2 * j, 2 * j + 1
                R[4 * j, a] = 1.0
                R[4 * j + 1, a] = R[4 * j + 1, b] = 0.5
                R[4 * j + 2, a] = R[4 * j + 2, b] = 0.5
                R[4 * j + 3, b] = 1.0
        else:
            R[:K, :K] = torch.eye(K, dtype=torch.float64, device="cpu")
        return R

    # ------------------------------------------------------------------ projection
    def projection_matrix(self, target: Basis) -> torch.Tensor:
        """``P`` (float64, ``K_target x K``): the L2-orthogonal projection onto ``target``.

        ``theta_target = P @ theta`` minimises ``int_0^1 |theta_target(t) - theta(t)|^2 dt``;
        a ``theta`` already in the target space is reproduced exactly.
        """
        if not isinstance(target, Basis):
            raise TypeError(f"target must be a Basis, got {type(target).__name__}")
        return _projection(self, target).clone()

    def project(self, theta: torch.Tensor, target: Basis) -> torch.Tensor:
        """Apply :meth:`projection_matrix` along the first dimension of ``theta``."""
        return apply_matrix(self.projection_matrix(target), theta)

    def refine(self, theta: torch.Tensor) -> torch.Tensor:
        """Apply :meth:`refine_matrix` along the first dimension of ``theta``."""
        return apply_matrix(self.refine_matrix(), theta)


def transfer_matrix(old: Basis, new: Basis) -> torch.Tensor:
    """The matrix taking node values in ``old`` to ``new``: the exact refinement matrix
    where ``new`` is ``old`` refined, else the L2 projection onto ``new``."""
    return old.refine_matrix() if new == old.refined() else old.projection_matrix(new)


def apply_matrix(M: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``out[i] = sum_k M[i, k] theta[k]`` for a tensor whose first dimension is ``K``."""
    if theta.shape[0] != M.shape[1]:
        raise ValueError(
            f"theta has {theta.shape[0]} nodes along dim 0, expected {M.shape[1]} for this basis"
        )
    flat = theta.reshape(theta.shape[0], -1)
    out = (M.to(device=theta.device, dtype=torch.float64) @ flat.to(torch.float64)).to(theta.dtype)
    return out.reshape((M.shape[0],) + tuple(theta.shape[1:]))


def _gauss(n: int, a: float, b: float):
    x, w = np.polynomial.legendre.leggauss(n)
    return (a + (b - a) * (x + 1.0) / 2.0).tolist(), (w * (b - a) / 2.0).tolist()


def _mass(rows: Basis, cols: Basis) -> torch.Tensor:
    """``M[i, j] = int_0^1 phi^rows_i phi^cols_j dt``, exact: quadrature of degree >= the
    product's on every piece of the merged breakpoints."""
    edges = sorted(set(rows.breakpoints()) | set(cols.breakpoints()))
    n_q = (rows.degree + cols.degree) // 2 + 1
    pts, wts = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            p, w = _gauss(n_q, a, b)
            pts += p
            wts += w
    w = torch.tensor(wts, dtype=torch.float64, device="cpu")
    return rows(pts).T @ (w[:, None] * cols(pts))


@lru_cache(maxsize=256)
def _projection(src: Basis, dst: Basis) -> torch.Tensor:
    return torch.linalg.solve(_mass(dst, dst), _mass(dst, src))


def get(name, n_basis: int) -> Basis:
    """The basis of family ``name`` with ``n_basis`` nodes (a ``Basis`` passes through,
    ``n_basis`` must then agree)."""
    if isinstance(name, Basis):
        if name.n_basis != n_basis:
            raise ValueError(f"n_basis={n_basis} disagrees with the given basis {name}")
        return name
    if not isinstance(name, str):
        raise TypeError(f"basis must be a str or Basis, got {type(name).__name__}")
    return Basis(name, n_basis)


def check_family(name) -> str:
    """Validate a family name and return it."""
    if not isinstance(name, str):
        raise TypeError(f"basis must be a str, got {type(name).__name__}")
    if name not in FAMILIES:
        raise ValueError(f"unknown basis {name!r}; expected one of {list(FAMILIES)}")
    return name
