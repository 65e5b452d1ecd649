"""Shared benchmark machinery: interleaved timing, environment record, JSON output."""

from __future__ import annotations

import datetime
import os
import pathlib
import statistics

import torch
import torch.utils.benchmark as tb

from ..provenance import provenance
from ..report import check_writable, write_json

_RUN_DIR: pathlib.Path | None = None


def results_dir() -> pathlib.Path:
    """Where the JSON goes: ``CONTNET_BENCH_RESULTS`` if set (``bench/results`` to publish,
    as ``make figures`` and ``bench/gpu.sh`` do); else a fresh folder of this run,
    ``runs/bench/<UTC date and time>`` in the working folder, so that a benchmark never
    replaces a result unless told where to write."""
    global _RUN_DIR
    if os.environ.get("CONTNET_BENCH_RESULTS"):
        return pathlib.Path(os.environ["CONTNET_BENCH_RESULTS"])
    if _RUN_DIR is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = pathlib.Path.cwd() / "runs" / "bench" / stamp
        _RUN_DIR, n = base, 1
        while _RUN_DIR.exists():
            n += 1
            _RUN_DIR = base.with_name(f"{stamp}-{n}")
    return _RUN_DIR


# torch.profiler's tracer (kineto) prints a line to stderr at every start and stop of a
# profile, and on a machine without a GPU an error about the device count: hundreds of
# lines in a run that measures memory on the CPU. It reads its level when the first
# profile starts; a level set by the caller is kept.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
ALLOCATOR = "system allocator defaults"


def keep_freed_memory() -> str:
    """Ask glibc's malloc to keep freed memory in the process (mmap and trim thresholds at
    1 GiB), as a caching allocator does. Without it, whether a freed tensor's pages go back
    to the kernel -- and are faulted in again on the next allocation, a part of a CPU
    forward pass that bench/README.md gives -- depends on allocation history, and flips
    between implementations and runs. Applies to every implementation alike."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        ok = 0
    return "glibc malloc: mmap/trim thresholds 1 GiB" if ok else "system allocator defaults"


def environment(device: str) -> dict:
    """The result's provenance (:func:`contnet.provenance.provenance`) and the allocator."""
    return {**provenance(device), "allocator": ALLOCATOR}


def setup(device: str, pin_allocator: bool = True) -> None:
    """Call once before timing: the results folder checked writable; a stable CPU allocator
    (see :func:`keep_freed_memory`); ``pin_allocator=False`` keeps the system's defaults, as
    a user's process has them."""
    global ALLOCATOR
    where = (
        "CONTNET_BENCH_RESULTS" if os.environ.get("CONTNET_BENCH_RESULTS") else "the results folder"
    )
    check_writable(results_dir(), where)  # before any timing
    if device == "cpu" and pin_allocator:
        ALLOCATOR = keep_freed_memory()


def time_side_by_side(
    fns: dict, rounds: int = 5, min_run_time: float = 0.2, device: str = "cpu"
) -> dict:
    """Median seconds per call of each callable, measured in interleaved rounds (each round
    times every implementation once, so drifts of a noisy machine hit all alike; the order
    within a round rotates from round to round, so none always runs first)."""
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            timer = tb.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            m = timer.blocked_autorange(min_run_time=min_run_time)
            samples[name].append(m.median)
        if device == "cuda":
            torch.cuda.synchronize()
    return {name: summary(v) for name, v in samples.items()}


def summary(rounds: list) -> dict:
    """The record of one implementation's per-round seconds: median, min, max, rounds."""
    return {
        "median_s": statistics.median(rounds),
        "min_s": min(rounds),
        "max_s": max(rounds),
        "rounds": rounds,
    }


def peak_bytes(fn, device: str) -> int:
    """Peak of the bytes allocated while ``fn()`` runs, above what was allocated when it
    started (its result freed before the return). CUDA: the caching allocator's
    ``max_memory_allocated``. CPU: the allocation and free events that ``torch.profiler``
    records with ``profile_memory`` (every tensor of PyTorch's CPU allocator, summed in
    time order); memory a library allocates past it (oneDNN's scratch space) is not seen."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        raise RuntimeError(
            "peak_bytes: torch.profiler recorded no allocation while fn ran (set "
            "KINETO_LOG_LEVEL=0 to see the profiler's own messages)"
        )
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def paired_ratio(timings: dict, name: str, ref: str) -> float:
    """Median over the interleaved rounds of ``name``'s time over ``ref``'s in the same
    round: a drift of the machine that slows one round slows both sides of its ratio."""
    return statistics.median(a / b for a, b in zip(timings[name]["rounds"], timings[ref]["rounds"]))


def write(name: str, payload: dict) -> pathlib.Path:
    return write_json(results_dir() / name, payload)


def device_tag(device: str) -> str:
    if device == "cuda":
        n = torch.cuda.get_device_name().lower()
        for tag in ("h200", "h100", "a100", "l4", "l40"):
            if tag in n:
                return tag
        return "cuda"
    return "cpu"


def copy_bandwidth(device: str, numel: int = 1 << 26) -> float:
    """Measured device copy bandwidth in GB/s (bytes read + written per second)."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    t = time_side_by_side({"copy": lambda: dst.copy_(src)}, rounds=3, device=device)["copy"][
        "median_s"
    ]
    return 2 * src.numel() * src.element_size() / t / 1e9


def env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default)
