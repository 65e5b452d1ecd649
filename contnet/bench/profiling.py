"""Where one pass spends its time, from torch.profiler: operators, kernels, the device's
busy time, CUDA runtime calls (``contnet bench block --profile``)."""

from __future__ import annotations

import torch

from ..report import format_table

_OP_PREFIXES = ("aten::", "contnet::")


def _top_level(event) -> bool:
    """Whether a profiler event is an operator called from outside any other operator
    (``aten::conv2d``, not the ``aten::convolution`` inside it)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(_OP_PREFIXES):
            return False
        parent = parent.cpu_parent
    return True


def busy_us(intervals) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    busy, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def profile_pass(fn, device) -> dict:
    """Where one call of ``fn`` spends its time, from torch.profiler (the call warmed up
    before): its wall time under the profiler, the operators called (top level) and
    their kernels, the device's busy time (union of its kernels' and copies' intervals),
    the CUDA runtime calls (launches, allocations, synchronisations, copies: count and
    host time; the pass's closing synchronisation apart, as the host's wait for the
    device at the end) and the operators with the most host time of their own. The profiler
    slows the host; the figures locate time, the interleaved timings measure it."""
    import time

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = list(prof.events())
    on_device = [e for e in events if e.device_type == DeviceType.CUDA]
    host = [e for e in events if e.device_type == DeviceType.CPU]
    calls = [
        e
        for e in host
        if e.name.startswith("cuda") or e.name.startswith("cu") and e.name[2:3].isupper()
    ]
    # the pass's own closing synchronisation: how long the host waited for the device at
    # the end (near 0 when the device kept up), not one of the pass's calls
    syncs = [e for e in calls if e.name == "cudaDeviceSynchronize"]
    closing = max(syncs, key=lambda e: e.time_range.start) if syncs else None
    runtime = {}
    for e in calls:
        if e is closing:
            continue
        r = runtime.setdefault(e.name, {"count": 0, "host_ms": 0.0})
        r["count"] += 1
        r["host_ms"] += e.self_cpu_time_total / 1e3
    ops = [e for e in host if e.name.startswith(_OP_PREFIXES) and _top_level(e)]
    top = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:10]
    return {
        "wall_ms": wall * 1e3,
        "operators": len(ops),
        "device_kernels": len(on_device),
        "device_busy_ms": busy_us((e.time_range.start, e.time_range.end) for e in on_device) / 1e3,
        "runtime_calls": runtime,
        "closing_sync_ms": closing.self_cpu_time_total / 1e3 if closing else 0.0,
        "top_self_host_ms": {a.key: a.self_cpu_time_total / 1e3 for a in top},
    }


def print_profile(prof: dict) -> None:
    rows = []
    for impl, passes in prof.items():
        for kind, p in passes.items():
            calls = p["runtime_calls"]

            def count(*names, calls=calls):
                return sum(calls[n]["count"] for n in calls if n.startswith(names))

            rows.append(
                [
                    impl,
                    kind,
                    f"{p['wall_ms']:.2f}",
                    p["operators"],
                    p["device_kernels"],
                    f"{p['device_busy_ms']:.2f}",
                    count("cudaMalloc", "cudaFree"),
                    count("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"),
                    count("cudaMemcpy"),
                ]
            )
    header = ["impl", "pass", "wall ms", "ops", "kernels", "busy ms", "mallocs", "syncs", "copies"]
    print("profile (one pass under torch.profiler):\n" + format_table(rows, header))
