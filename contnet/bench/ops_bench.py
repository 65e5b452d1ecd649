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
import json
import statistics
import subprocess
import sys

import torch

from .. import ops
from ..argtypes import device, nonnegative_int, positive_int
from . import common


def _chain(h, cs):
    def chain(x, ks):
        for k, c in zip(ks, cs):
            x = x + (h * c) * k
        return x

    return chain


def _time_case(n: int, p: int, device: str, rounds: int, min_run_time: float) -> dict:
    """Time the three implementations of one case (``n`` terms, ``2^p`` elements)."""
    h = 0.25
    cs = [0.1 * (j + 1) for j in range(n)]
    chain = _chain(h, cs)
    torch._dynamo.reset()  # a fresh compilation per case, not a pile of recompiles
    compiled = torch.compile(chain, dynamic=False)
    numel = 1 << p
    x = torch.randn(numel, device=device)
    ks = [torch.randn(numel, device=device) for _ in range(n)]
    compiled(x, ks)  # compile outside the timing
    return common.time_side_by_side(
        {
            "fused": lambda: ops.rk_combine(x, ks, h, cs),
            "eager": lambda: chain(x, ks),
            "compile": lambda: compiled(x, ks),
        },
        rounds=rounds,
        min_run_time=min_run_time,
        device=device,
    )


def _over_fused(t: dict) -> dict:
    """``eager_over_fused`` and ``compile_over_fused`` of one case's timings (medians)."""
    return {
        f"{o}_over_fused": t[o]["median_s"] / t["fused"]["median_s"] for o in ("eager", "compile")
    }


def _time_case_in_processes(
    n: int, p: int, device: str, rounds: int, allocator: str, processes: int
) -> tuple[dict, list]:
    """Time one case in ``processes`` fresh interpreters, each starting from a new
    allocator state, as a user's script does. Returns the timings pooled over all rounds of
    all processes, and each process's ratios (measured side by side in that process)."""
    per_process = []
    for _ in range(processes):
        cmd = [sys.executable, "-m", "contnet.bench", "ops", "--one-case", str(n), str(p)]
        cmd += ["--device", device, "--rounds", str(rounds), "--allocator", allocator]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        per_process.append(json.loads(out.strip().splitlines()[-1]))
    pooled = {
        name: common.summary([r for t in per_process for r in t[name]["rounds"]])
        for name in per_process[0]
    }
    return pooled, [_over_fused(t) for t in per_process]


def run(
    device: str = "cpu",
    terms=(2, 3, 4, 5),
    log2_sizes=(16, 18, 20, 22, 24),
    rounds: int = 5,
    quick: bool = False,
    allocator: str = "pinned",
    processes: int = 0,
):
    """``processes`` > 0: every case is timed in that many fresh processes (see
    :func:`_time_case_in_processes`); the ratios reported are then the medians of the
    per-process ratios."""
    if quick:
        terms, log2_sizes, rounds = (2, 5), (16, 20), 2
    common.setup(device, pin_allocator=allocator == "pinned")
    min_run_time = 0.1 if quick else 0.2
    results = []
    copy_gbps = common.copy_bandwidth(device) if device == "cuda" else None
    for n in terms:
        for p in log2_sizes:
            numel = 1 << p
            row = {"terms": n, "numel": numel, "dtype": "float32"}
            if processes:
                t, per_process = _time_case_in_processes(n, p, device, rounds, allocator, processes)
                row["per_process"] = per_process
                for key in ("eager_over_fused", "compile_over_fused"):
                    row[key] = statistics.median(r[key] for r in per_process)
            else:
                t = _time_case(n, p, device, rounds, min_run_time)
                row.update(_over_fused(t))
            fused = t["fused"]["median_s"]
            gbps = (n + 2) * 4 * numel / fused / 1e9
            row["median_ms"] = {k: v["median_s"] * 1e3 for k, v in t.items()}
            row["timings"] = t
            row["fused_gbps"] = gbps
            if copy_gbps:
                row["fused_fraction_of_copy_bandwidth"] = gbps / copy_gbps
            results.append(row)
            spread = ""
            if processes:
                e = sorted(r["eager_over_fused"] for r in row["per_process"])
                c = sorted(r["compile_over_fused"] for r in row["per_process"])
                spread = (
                    f"  (per process: eager {e[0]:.2f}-{e[-1]:.2f}, compile {c[0]:.2f}-{c[-1]:.2f})"
                )
            print(
                f"terms {n}  2^{p:<2}  fused {fused * 1e3:8.3f} ms  eager/fused {row['eager_over_fused']:5.2f}  "
                f"compile/fused {row['compile_over_fused']:5.2f}  {gbps:7.1f} GB/s"
                + (f" ({row['fused_fraction_of_copy_bandwidth']:.0%} of copy)" if copy_gbps else "")
                + spread,
                flush=True,
            )
    payload = {
        "suite": "ops",
        **common.environment(device),
        "copy_bandwidth_gbps": copy_gbps,
        "processes": processes,
        "results": results,
    }
    suffix = "-system" if device == "cpu" and allocator == "system" else ""
    suffix += "-processes" if processes else ""
    path = common.write(f"ops-{common.device_tag(device)}{suffix}.json", payload)
    print(f"wrote {path}")
    return payload


def _log2_size(text: str) -> int:
    """An argparse type: log2 of a tensor's elements, 1..30 (2^30 float32 is 4 GiB a term)."""
    v = positive_int(text)
    if v > 30:
        raise argparse.ArgumentTypeError(f"must be at most 30 (2^30 elements a term), got {v}")
    return v


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="contnet bench ops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--quick", action="store_true", help="a short run (2 term counts, 2 sizes)")
    p.add_argument(
        "--allocator",
        choices=("pinned", "system"),
        default="pinned",
        help="CPU: pin glibc's malloc thresholds (default) or keep the system's defaults, "
        "under which the eager chain's fresh allocations are faulted in again "
        "(results to ops-cpu-system.json)",
    )
    p.add_argument("--terms", type=positive_int, nargs="+", default=[2, 3, 4, 5])
    p.add_argument("--log2-sizes", type=_log2_size, nargs="+", default=[16, 18, 20, 22, 24])
    p.add_argument(
        "--processes",
        type=nonnegative_int,
        default=0,
        help="time every case in this many fresh processes, each from a new allocator state "
        "(ratios: medians of the per-process ratios); 0: all cases in this process",
    )
    p.add_argument(
        "--one-case", type=int, nargs=2, metavar=("TERMS", "LOG2_SIZE"), help=argparse.SUPPRESS
    )
    a = p.parse_args(argv)
    if a.one_case:  # a child of --processes: time one case, print its timings as JSON
        common.setup(a.device, pin_allocator=a.allocator == "pinned")
        print(json.dumps(_time_case(*a.one_case, a.device, a.rounds, 0.2)))
        return
    run(
        a.device,
        terms=a.terms,
        log2_sizes=a.log2_sizes,
        rounds=a.rounds,
        quick=a.quick,
        allocator=a.allocator,
        processes=a.processes,
    )


if __name__ == "__main__":
    main()
