"""Stage-accumulation op against the arithmetic as a hand-written loop writes it.

For every term count (2..5) and size (2^16..2^24 float32 elements), three
implementations of ``x + h * sum_j c_j k_j`` are timed side by side in one run:

- ``fused``: ``contnet.ops.rk_combine`` (one pass over memory);
- ``eager``: ``x = x + (h * c_j) * k_j`` term by term in eager PyTorch;
- ``compile``: ``torch.compile`` of that same chain.

Reported: medians, the ratios eager/fused and compile/fused (above 1: fused is faster),
and the fused op's achieved bandwidth for the bytes it must move, ``(terms + 2) * 4 *
numel`` (read x and every term, write the output); on a GPU also as a fraction of the
device's measured copy bandwidth.
"""

from __future__ import annotations

import argparse

import torch

from contnet import ops

from . import common


def _chain(h, cs):
    def chain(x, ks):
        for k, c in zip(ks, cs):
            x = x + (h * c) * k
        return x

    return chain


def run(
    device: str = "cpu",
    terms=(2, 3, 4, 5),
    log2_sizes=(16, 18, 20, 22, 24),
    rounds: int = 5,
    quick: bool = False,
    allocator: str = "pinned",
):
    if quick:
        terms, log2_sizes, rounds = (2, 5), (16, 20), 2
    common.setup(device, pin_allocator=allocator == "pinned")
    h = 0.25
    results = []
    copy_gbps = common.copy_bandwidth(device) if device == "cuda" else None
    for n in terms:
        cs = [0.1 * (j + 1) for j in range(n)]
        chain = _chain(h, cs)
        for p in log2_sizes:
            torch._dynamo.reset()  # a fresh compilation per case, not a pile of recompiles
            compiled = torch.compile(chain, dynamic=False)
            numel = 1 << p
            x = torch.randn(numel, device=device)
            ks = [torch.randn(numel, device=device) for _ in range(n)]
            compiled(x, ks)  # compile outside the timing
            t = common.time_side_by_side(
                {
                    "fused": lambda x=x, ks=ks, cs=cs: ops.rk_combine(x, ks, h, cs),
                    "eager": lambda x=x, ks=ks, f=chain: f(x, ks),
                    "compile": lambda x=x, ks=ks, f=compiled: f(x, ks),
                },
                rounds=rounds,
                min_run_time=0.1 if quick else 0.2,
                device=device,
            )
            fused = t["fused"]["median_s"]
            gbps = (n + 2) * 4 * numel / fused / 1e9
            row = {
                "terms": n,
                "numel": numel,
                "dtype": "float32",
                "median_ms": {k: v["median_s"] * 1e3 for k, v in t.items()},
                "timings": t,
                "eager_over_fused": t["eager"]["median_s"] / fused,
                "compile_over_fused": t["compile"]["median_s"] / fused,
                "fused_gbps": gbps,
            }
            if copy_gbps:
                row["fused_fraction_of_copy_bandwidth"] = gbps / copy_gbps
            results.append(row)
            print(
                f"terms {n}  2^{p:<2}  fused {fused * 1e3:8.3f} ms  eager/fused {row['eager_over_fused']:5.2f}  "
                f"compile/fused {row['compile_over_fused']:5.2f}  {gbps:7.1f} GB/s"
                + (
                    f" ({row['fused_fraction_of_copy_bandwidth']:.0%} of copy)" if copy_gbps else ""
                ),
                flush=True,
            )
    payload = {
        "suite": "ops",
        **common.environment(device),
        "copy_bandwidth_gbps": copy_gbps,
        "results": results,
    }
    suffix = "-system" if device == "cpu" and allocator == "system" else ""
    path = common.write(f"ops-{common.device_tag(device)}{suffix}.json", payload)
    print(f"wrote {path}")
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a short run (2 term counts, 2 sizes)")
    p.add_argument(
        "--allocator",
        choices=("pinned", "system"),
        default="pinned",
        help="CPU: pin glibc's malloc thresholds (default) or keep the system's defaults, "
        "under which the eager chain's fresh allocations are faulted in again "
        "(results to ops-cpu-system.json)",
    )
    p.add_argument("--terms", type=int, nargs="+", default=[2, 3, 4, 5])
    p.add_argument("--log2-sizes", type=int, nargs="+", default=[16, 18, 20, 22, 24])
    a = p.parse_args(argv)
    run(
        a.device,
        terms=a.terms,
        log2_sizes=a.log2_sizes,
        rounds=a.rounds,
        quick=a.quick,
        allocator=a.allocator,
    )


if __name__ == "__main__":
    main()
