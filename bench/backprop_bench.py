"""Backprop modes: the adjoint's gradient error, and activation memory against n_steps.

``error``: the relative error ``|g_adjoint - g_direct| / |g_direct|`` of the gradient of
``sum(out^2)`` with respect to the block's input and every parameter, for euler and heun at
``n_steps`` 4..128, with a smooth (``fem_linear``) basis, a ``piecewise_constant`` basis
whose cells the steps resolve (``n_steps`` a multiple of ``K``) and one whose cells they
straddle (``K = 3``); the fitted slope of log error against log h.

``memory``: the activation memory of one forward+backward for ``n_steps`` 1..64 and each
mode (``direct``, ``checkpoint``, ``adjoint``): on a GPU the peak allocated beyond the
inputs and parameters; on the CPU the peak of the bytes held by tensors saved for backward
(counted through ``torch.autograd.graph.saved_tensors_hooks`` over forward and backward,
the steps recomputed in backward included).
"""

from __future__ import annotations

import argparse

import torch

import contnet
from contnet.train import fitted_order

from . import common


class SavedBytes:
    """Peak of the bytes held by tensors saved for backward while active (distinct storages;
    a storage is released when the last graph node holding it is freed)."""

    def __init__(self):
        self.live, self.current, self.peak = {}, 0, 0

    def _pack(self, t):
        s = t.untyped_storage()
        key = (s.data_ptr(), s.device)
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = entry = [s.nbytes(), 0]
            self.current += s.nbytes()
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        return _Held(self, key, t)

    def _release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class _Held:
    __slots__ = ("owner", "key", "tensor")

    def __init__(self, owner, key, tensor):
        self.owner, self.key, self.tensor = owner, key, tensor

    def __del__(self):
        self.owner._release(self.key)


def _block(channels, basis, K, scheme, n_steps, device, norm=None):
    unit = contnet.ConvUnit(channels, n_basis=K, basis=basis, norm=norm, act="tanh").to(device)
    return contnet.ContinuousBlock(unit, scheme=scheme, n_steps=n_steps)


def gradient_error(device="cpu", steps=(4, 8, 16, 32, 64, 128), dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(4, 4, 6, 6, device=device, dtype=dtype)
    cases = [("fem_linear", 3), ("piecewise_constant", 4), ("piecewise_constant", 3)]
    rows = []
    for basis, K in cases:
        block = _block(4, basis, K, "euler", 1, device).to(dtype)
        params = list(block.unit.parameters())
        for scheme in ("euler", "heun"):
            block.scheme = scheme
            errs = []
            for n in steps:
                block.n_steps = n
                xs = x.clone().requires_grad_()
                grads = {}
                for mode in ("direct", "adjoint"):
                    block.backprop = mode
                    out = block(xs)
                    g = torch.autograd.grad((out * out).sum(), [xs, *params])
                    grads[mode] = torch.cat([v.flatten() for v in g])
                errs.append(
                    ((grads["adjoint"] - grads["direct"]).norm() / grads["direct"].norm()).item()
                )
            row = {
                "basis": basis,
                "K": K,
                "scheme": scheme,
                "n_steps": list(steps),
                "rel_error": errs,
                "slope": fitted_order(steps, errs),
            }
            rows.append(row)
            print(
                f"{basis:<18} K={K} {scheme:<5} "
                + " ".join(f"{e:8.1e}" for e in errs)
                + f"   slope {row['slope']:.2f}",
                flush=True,
            )
    return rows


def memory(
    device="cpu", steps=(1, 2, 4, 8, 16, 32, 64), channels=16, pixels=16, batch=8, scheme="rk4"
):
    torch.manual_seed(0)
    x = torch.randn(batch, channels, pixels, pixels, device=device)
    rows = []
    for mode in ("direct", "checkpoint", "adjoint"):
        block = _block(channels, "fem_linear", 4, scheme, 1, device, norm="batch")
        block.backprop = mode
        bytes_per_n = []
        for n in steps:
            block.n_steps = n
            xs = x.clone().requires_grad_()
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                torch.autograd.grad(block(xs).square().sum(), [xs, *block.parameters()])
                torch.cuda.synchronize()
                used = torch.cuda.max_memory_allocated() - base
            else:
                with SavedBytes() as counter:
                    torch.autograd.grad(block(xs).square().sum(), [xs, *block.parameters()])
                used = counter.peak
            bytes_per_n.append(used)
        rows.append({"mode": mode, "n_steps": list(steps), "bytes": bytes_per_n})
        print(
            f"{mode:<10} " + " ".join(f"{b / 2**20:8.2f}" for b in bytes_per_n) + "  MiB",
            flush=True,
        )
    return {
        "shape": [batch, channels, pixels, pixels],
        "scheme": scheme,
        "basis": "fem_linear",
        "K": 4,
        "state_bytes": x.numel() * x.element_size(),
        "kind": "peak allocated" if device == "cuda" else "peak bytes saved for backward",
        "rows": rows,
    }


def plot(mem, path, device_name):
    from contnet.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in mem["rows"]:
        ax.plot(r["n_steps"], [b / 2**20 for b in r["bytes"]], "o-", label=r["mode"])
    ax.set(xlabel="n_steps", ylabel=f"MiB ({mem['kind']})", xscale="log", yscale="log")
    ax.set_xticks(mem["rows"][0]["n_steps"], [str(n) for n in mem["rows"][0]["n_steps"]])
    ax.set_title(
        f"activation memory of forward+backward, {mem['scheme']}\n{device_name}", fontsize=9
    )
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def run(device="cpu", quick=False):
    common.setup(device)
    print(
        "adjoint gradient error, relative to direct, for n_steps",
        (4, 8, 16, 32) if quick else (4, 8, 16, 32, 64, 128),
    )
    errors = gradient_error(device, steps=(4, 8, 16, 32) if quick else (4, 8, 16, 32, 64, 128))
    print(
        "\nactivation memory of forward+backward (MiB) for n_steps",
        (1, 4, 16) if quick else (1, 2, 4, 8, 16, 32, 64),
    )
    mem = memory(device, steps=(1, 4, 16) if quick else (1, 2, 4, 8, 16, 32, 64))
    payload = {
        "suite": "backprop",
        **common.environment(device),
        "adjoint_error": errors,
        "memory": mem,
    }
    path = common.write(f"backprop-{common.device_tag(device)}.json", payload)
    print(f"wrote {path}")
    try:
        print(f"wrote {plot(mem, path.with_suffix('.png'), payload['device_name'])}")
    except ImportError:
        pass
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    run(a.device, a.quick)


if __name__ == "__main__":
    main()
