"""The block benchmark's problems on features in the last dimension: a block of
:class:`contnet.MLPUnit` (``mlp``) or :class:`contnet.TransformerUnit` (``transformer``) on
``(batch, tokens, dim)``, in every implementation of :mod:`contnet.bench.block_problem`:

- ``contnet``: ``ContinuousBlock(unit)`` as a user calls it;
- ``hand``: the same rate written with ``torch.nn.functional``, its weights interpolated
  at every stage, stepped by the plain Runge-Kutta loop;
- ``torchdiffeq``: that rate, its weights indexed with tensor time, through
  ``torchdiffeq.odeint`` with a fixed step;
- ``compile``: ``torch.compile`` of the hand loop;
- ``floor``: only the rate's operations, stage after stage, with every stage's weights
  precomputed: the limit.

All of them read the unit's own node stacks (``floor``: copies taken at each stage time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import basis as basis_lib
from .. import schemes
from ..block import ContinuousBlock
from ..nn import MLPUnit, TransformerUnit
from .block_problem import at_time, hand_loop, torchdiffeq_fixed

FEATURE_SHAPES = {
    # name: (batch, tokens, dim)
    "mlp": (32, 64, 128),
    "transformer": (16, 64, 128),
}
HEADS = 4


class FeatureProblem:
    """One configuration of a feature unit: weights, input, and every implementation."""

    def __init__(self, kind, batch, tokens, dim, basis, K, scheme, n_steps, device):
        torch.manual_seed(0)
        common = {"n_basis": K, "basis": basis, "scale": 0.5}
        if kind == "mlp":
            unit = MLPUnit(dim, hidden=4 * dim, **common)
        else:
            unit = TransformerUnit(dim, HEADS, mlp_ratio=4.0, **common)
        self.kind, self.unit = kind, unit.to(device)
        self.block = ContinuousBlock(self.unit, scheme=scheme, n_steps=n_steps)
        self.basis = basis_lib.get(basis, K)
        self.scheme, self.n_steps, self.tab = scheme, n_steps, schemes.get(scheme)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, tokens, dim, generator=g).to(device).requires_grad_()
        self.names = list(unit.basis_tensors())
        self.stacks = [w for ws in unit.basis_tensors().values() for w in ws]
        times = [t for row in schemes.stage_times(self.tab, n_steps) for t in row]
        self.floor_w = [
            [self._at(w, t).detach().clone().requires_grad_() for w in self.stacks] for t in times
        ]
        self._compiled = None

    def _at(self, theta, t):
        return at_time(self.basis, theta, t)

    def _rate_w(self, x, ws):
        """The unit's rate with its weights given, in ``torch.nn.functional``."""
        w = dict(zip(self.names, zip(ws[0::2], ws[1::2])))
        D = x.shape[-1]
        h = F.layer_norm(x, (D,), *w["norm"])
        y = F.linear(F.gelu(F.linear(h, *w["fc1"])), *w["fc2"])
        if self.kind == "transformer":
            B, L, _ = x.shape
            qkv = F.linear(h, *w["qkv"]).view(B, L, 3, HEADS, D // HEADS)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
            y = F.linear(a, *w["proj"]) + y
        return 0.5 * y

    # implementations -----------------------------------------------------------------
    def hand(self, x, *stacks):
        return hand_loop(
            self.tab,
            self.n_steps,
            x,
            lambda t, y: self._rate_w(y, [self._at(w, t) for w in stacks]),
        )

    def contnet(self, x, *stacks):
        return self.block(x)

    def floor(self, x, *stacks):
        for ws in self.floor_w:
            x = self._rate_w(x, ws)
        return x

    def torchdiffeq(self, x, *stacks):
        K, fam = self.basis.n_basis, self.basis.family

        def f(t, y):
            # weights from tensor time, as a torchdiffeq user writes it (no host sync)
            if fam == "piecewise_constant":
                k = torch.clamp((t * K).floor().long(), max=K - 1)
                return self._rate_w(y, [w[k] for w in stacks])
            s = t * (K - 1)
            j = torch.clamp(s.floor().long(), max=K - 2)
            a = (s - j).to(y.dtype)
            return self._rate_w(y, [w[j] * (1 - a) + w[j + 1] * a for w in stacks])

        return torchdiffeq_fixed(f, x, self.scheme, self.n_steps)

    def compile(self, x, *stacks):
        if self._compiled is None:
            torch._dynamo.reset()
            self._compiled = torch.compile(self.hand)
        return self._compiled(x, *stacks)

    def inputs(self, impl):
        if impl == "floor":
            return [self.x] + [w for ws in self.floor_w for w in ws]
        return [self.x, *self.stacks]
