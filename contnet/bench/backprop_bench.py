"""Backprop modes: the adjoint's gradient error, and activation memory against n_steps.

``error``: the relative error ``|g_adjoint - g_direct| / |g_direct|`` of the gradient of
``sum(out^2)`` with respect to the block's input and every parameter, for euler and heun at
``n_steps`` 4..128, with a smooth (``fem_linear``) basis, a ``piecewise_constant`` basis
whose cells the steps resolve (``n_steps`` a multiple of ``K``) and one whose cells they
straddle (``K = 3``); the fitted slope of log error against log h.

``memory``: the activation memory of one forward+backward for ``n_steps`` 1..64 and each
mode (``direct``, ``checkpoint``, ``adjoint``): the peak allocated beyond the inputs and
parameters (:func:`bench.common.peak_bytes`: the CUDA allocator's peak on a GPU, the
profiler's allocation events on the CPU).
"""

from __future__ import annotations

import argparse

import torch

from ..argtypes import device
from ..block import ContinuousBlock
from ..nn import ConvUnit
from ..report import pyplot, save_figure
from ..schemes import fitted_order
from . import common


def _block(channels, basis, K, scheme, n_steps, device, norm=None):
    unit = ConvUnit(channels, n_basis=K, basis=basis, norm=norm, act="tanh").to(device)
    return ContinuousBlock(unit, scheme=scheme, n_steps=n_steps)


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

            def step(block=block, xs=xs):
                return torch.autograd.grad(block(xs).square().sum(), [xs, *block.parameters()])

            bytes_per_n.append(common.peak_bytes(step, device))
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
        "kind": "peak allocated",
        "rows": rows,
    }


def plot(mem, path, device_name):

    plt = pyplot()
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
    return save_figure(fig, path)


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
        prog="contnet bench backprop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    run(a.device, a.quick)


if __name__ == "__main__":
    main()
