"""A continuous block against pure-PyTorch stepping, forward and forward+backward.

The rate is ContinuousNet's ``R(t, x) = scale * relu(conv(relu(conv(x; W1(t))); W2(t)))``
(3x3 convolutions, no bias) with weights in a ``piecewise_constant`` or ``fem_linear``
basis of ``K`` nodes, integrated over ``[0, 1]`` in ``n_steps`` steps. Implementations,
timed side by side in one run:

- ``contnet``: ``ContinuousBlock(ConvUnit(...))`` as a user calls it (fused stage
  epilogues, one interpolation launch for all stage weights);
- ``hand``: a straightforward pure-PyTorch Runge-Kutta loop over the Butcher tableau,
  interpolating the weights at every stage;
- ``torchdiffeq``: ``torchdiffeq.odeint`` with a fixed step (its ``rk4`` is the 3/8 rule;
  classic rk4 runs through torchdiffeq's own ``rk4_step_func``), the rate indexing the
  weights with tensor time as a torchdiffeq user writes it;
- ``compile``: ``torch.compile`` of the hand loop;
- ``floor``: only the convolutions and activations the scheme needs, back to back, with
  the weights of every stage precomputed in the convolutions' layout (channels_last
  filters with a channels_last input) and scaled so that its values stay normal floats:
  the limit.

Reported per configuration: median ms of forward (no grad) and forward+backward (grads of
the input and the weights), their ratios to ``floor`` and to ``hand``, and the memory of
forward+backward (peak allocated above what was allocated before it,
:func:`bench.common.peak_bytes`).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from .. import basis as basis_lib
from .. import schemes
from ..block import ContinuousBlock
from ..models import cuda_graph
from ..nn import ConvUnit
from ..report import format_table, pyplot, save_figure
from . import common

SHAPES = {
    # name: (batch, channels, pixels)
    "stage1": (128, 16, 32),
    "stage2": (128, 32, 16),
    "stage3": (128, 64, 8),
    "wide": (64, 256, 16),
    # arithmetic negligible: the host time of every stage (ms / (stages * n_steps))
    "host": (1, 4, 4),
}
IMPLS = ("floor", "contnet", "hand", "torchdiffeq", "compile")
FLOOR_GAIN = 2.0


class Problem:
    """One configuration: weights, input, and every implementation of the block."""

    def __init__(
        self, batch, channels, pixels, basis, K, scheme, n_steps, device, channels_last, scale=0.5
    ):
        g = torch.Generator().manual_seed(0)
        std = 1.0 / math.sqrt(9 * channels)
        shape = (K, channels, channels, 3, 3)
        self.theta1 = (torch.randn(shape, generator=g) * std).to(device).requires_grad_()
        self.theta2 = (torch.randn(shape, generator=g) * std).to(device).requires_grad_()
        x = torch.randn(batch, channels, pixels, pixels, generator=g).to(device)
        self.x = (
            x.contiguous(memory_format=torch.channels_last) if channels_last else x
        ).requires_grad_()
        self.basis = basis_lib.get(basis, K)
        self.scheme, self.n_steps, self.scale = scheme, n_steps, scale
        self.tab = schemes.get(scheme)
        unit = ConvUnit(
            channels,
            n_basis=K,
            basis=basis,
            act="relu",
            norm=None,
            preact=False,
            bias=False,
            scale=scale,
        ).to(device)
        with torch.no_grad():
            unit.conv1.weight.copy_(self.theta1)
            unit.conv2.weight.copy_(self.theta2)
        if channels_last:
            unit = unit.to(memory_format=torch.channels_last)
        self.block = ContinuousBlock(unit, scheme=scheme, n_steps=n_steps)
        # the stage times, in order of evaluation, and the floor's weights at each, in the
        # layout the convolution takes them in (channels_last filters for a channels_last
        # input: an NCHW weight would be converted inside every call, which is not the limit)
        times = [t for row in schemes.stage_times(self.tab, n_steps) for t in row]
        layout = torch.channels_last if channels_last else torch.contiguous_format

        # each filter times 2: the floor chains its rates without the residual, and with
        # the rate's own weights its state would shrink ~4x a stage, to denormals (slow on
        # some CPUs) and zeros by the end; at this gain it stays in the normal range (the
        # arithmetic is the same whatever the values)
        def floor_weight(theta, t):
            w = FLOOR_GAIN * self._w(theta, t).detach()
            return w.clone(memory_format=layout).requires_grad_()

        self.floor_w = [(floor_weight(self.theta1, t), floor_weight(self.theta2, t)) for t in times]
        self._compiled = None

    # the rate, as written by hand --------------------------------------------------
    def _w(self, theta, t):
        (k0, w0), *rest = self.basis.coefficients(t)
        w = theta[k0] if not rest and w0 == 1.0 else theta[k0] * w0
        for k, c in rest:
            w = w + theta[k] * c
        return w

    def _rate_w(self, x, w1, w2):
        return self.scale * F.relu(F.conv2d(F.relu(F.conv2d(x, w1, padding=1)), w2, padding=1))

    def rate(self, t, x, theta1, theta2):
        return self._rate_w(x, self._w(theta1, t), self._w(theta2, t))

    # implementations -----------------------------------------------------------------
    def hand(self, x, theta1, theta2):
        tab, n = self.tab, self.n_steps
        h = 1.0 / n
        # the same stage times as contnet (the open-interval rule), so both compute one function
        for times in schemes.stage_times(tab, n):
            ks = []
            for i in range(tab.stages):
                xi = x
                for j in range(i):
                    if tab.a[i][j] != 0.0:
                        xi = xi + (h * tab.a[i][j]) * ks[j]
                ks.append(self.rate(times[i], xi, theta1, theta2))
            for i in range(tab.stages):
                if tab.b[i] != 0.0:
                    x = x + (h * tab.b[i]) * ks[i]
        return x

    def contnet(self, x, theta1, theta2):
        return self.block(x)

    def floor(self, x, theta1, theta2):
        for w1, w2 in self.floor_w:
            x = self._rate_w(x, w1, w2)
        return x

    def torchdiffeq(self, x, theta1, theta2):
        import torchdiffeq

        K, fam = self.basis.n_basis, self.basis.family

        def f(t, y):
            # weights from tensor time, as a torchdiffeq user writes it (no host sync)
            if fam == "piecewise_constant":
                k = torch.clamp((t * K).floor().long(), max=K - 1)
                return self._rate_w(y, theta1[k], theta2[k])
            s = t * (K - 1)
            j = torch.clamp(s.floor().long(), max=K - 2)
            a = (s - j).to(theta1.dtype)
            return self._rate_w(
                y, theta1[j] * (1 - a) + theta1[j + 1] * a, theta2[j] * (1 - a) + theta2[j + 1] * a
            )

        method = {"rk4": "rk4_classic", "rk4_38": "rk4"}.get(self.scheme, self.scheme)
        ts = torch.tensor([0.0, 1.0], device=x.device)
        return torchdiffeq.odeint(
            f, x, ts, method=method, options={"step_size": 1.0 / self.n_steps}
        )[-1]

    def compile(self, x, theta1, theta2):
        if self._compiled is None:
            torch._dynamo.reset()
            self._compiled = torch.compile(self.hand)
        return self._compiled(x, theta1, theta2)

    def inputs(self, impl):
        if impl == "floor":
            return [self.x] + [w for pair in self.floor_w for w in pair]
        if impl == "contnet":
            return [self.x, self.block.unit.conv1.weight, self.block.unit.conv2.weight]
        return [self.x, self.theta1, self.theta2]


def _register_classic_rk4():
    """torchdiffeq's fixed-grid rk4 is the 3/8 rule; classic rk4 through its own step function."""
    import importlib

    tde = importlib.import_module("torchdiffeq._impl.odeint")
    from torchdiffeq._impl.fixed_grid import FixedGridODESolver
    from torchdiffeq._impl.misc import Perturb
    from torchdiffeq._impl.rk_common import rk4_step_func

    class ClassicRK4(FixedGridODESolver):
        order = 4

        def _step_func(self, func, t0, dt, t1, y0):
            f0 = func(t0, y0, perturb=Perturb.NEXT if self.perturb else Perturb.NONE)
            return rk4_step_func(func, t0, dt, t1, y0, f0=f0, perturb=self.perturb), f0

    tde.SOLVERS.setdefault("rk4_classic", ClassicRK4)


def measure(problem: Problem, impls, device, rounds, min_run_time):
    fwd, fwdbwd, memory = {}, {}, {}
    for impl in impls:
        run = getattr(problem, impl)
        ins = problem.inputs(impl)

        def forward(run=run):
            with torch.no_grad():
                return run(*problem.inputs("hand"))

        def train_step(run=run, ins=ins):
            out = run(*problem.inputs("hand"))
            return torch.autograd.grad(out.sum(), ins)

        train_step()  # warm-up (compiles, caches the interpolation coefficients)
        fwd[impl], fwdbwd[impl] = forward, train_step
        memory[impl] = common.peak_bytes(train_step, device)
    t_fwd = common.time_side_by_side(fwd, rounds=rounds, min_run_time=min_run_time, device=device)
    t_fb = common.time_side_by_side(fwdbwd, rounds=rounds, min_run_time=min_run_time, device=device)
    with torch.no_grad():
        ref = problem.hand(*problem.inputs("hand"))
        check = (
            problem.contnet(*problem.inputs("hand")) - ref
        ).abs().max().item() / ref.abs().max().item()
    return t_fwd, t_fb, memory, check, {"forward": fwd, "forward_backward": fwdbwd}


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


def _busy_us(intervals) -> float:
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
        "device_busy_ms": _busy_us((e.time_range.start, e.time_range.end) for e in on_device) / 1e3,
        "runtime_calls": runtime,
        "closing_sync_ms": closing.self_cpu_time_total / 1e3 if closing else 0.0,
        "top_self_host_ms": {a.key: a.self_cpu_time_total / 1e3 for a in top},
    }


def _print_profile(prof: dict) -> None:
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


def run(
    device="cpu",
    shapes=("stage1", "stage2", "stage3"),
    batch=None,
    default_batch=None,
    bases=("piecewise_constant", "fem_linear"),
    schemes_=("rk4",),
    ks=(16,),
    impls=IMPLS,
    rounds=3,
    min_run_time=0.5,
    channels_last=None,
    tag=None,
    profile=False,
):
    # every ratio is to the floor: it is always measured
    impls = ("floor",) + tuple(i for i in impls if i != "floor")
    if "torchdiffeq" in impls:
        try:
            _register_classic_rk4()
        except ImportError:
            print("torchdiffeq is not installed (pip install torchdiffeq): skipping it")
            impls = tuple(i for i in impls if i != "torchdiffeq")
    common.setup(device)
    # channels_last by default on every device: the faster layout of these convolutions on
    # the CPU too (oneDNN), so the floor is the limit there as well
    channels_last = True if channels_last is None else channels_last
    name = f"block-{tag or common.device_tag(device)}.json"
    results = []
    for shape_name in shapes:
        b, c, p = SHAPES[shape_name]
        # an explicit batch for every shape; else the default one, which host (whose point
        # is a negligible amount of arithmetic) does not take
        b = batch or (default_batch if shape_name != "host" else None) or b
        for basis in bases:
            for scheme in schemes_:
                for K in ks:
                    K_eff = max(K, 2) if basis == "fem_linear" else K
                    prob = Problem(b, c, p, basis, K_eff, scheme, K, device, channels_last)
                    t_fwd, t_fb, mem, check, passes = measure(
                        prob, impls, device, rounds, min_run_time
                    )
                    row = {
                        "shape": shape_name,
                        "batch": b,
                        "channels": c,
                        "pixels": p,
                        "basis": basis,
                        "K": K_eff,
                        "scheme": scheme,
                        "n_steps": K,
                        "channels_last": channels_last,
                        "forward_ms": {k: v["median_s"] * 1e3 for k, v in t_fwd.items()},
                        "forward_backward_ms": {k: v["median_s"] * 1e3 for k, v in t_fb.items()},
                        "timings": {"forward": t_fwd, "forward_backward": t_fb},
                        "paired_over_floor": {
                            kind: {i: common.paired_ratio(t, i, "floor") for i in t}
                            for kind, t in (("forward", t_fwd), ("forward_backward", t_fb))
                        },
                        # ratios of medians, in the targets' terms: impl / floor, and
                        # hand / impl (how many times faster than hand)
                        "over_floor": over_floor(t_fwd, t_fb),
                        "faster_than_hand": faster_than_hand(t_fwd, t_fb)
                        if "hand" in t_fb
                        else None,
                        "memory_bytes": mem,
                        "memory_kind": "peak allocated",
                        "contnet_vs_hand_rel_diff": check,
                    }
                    results.append(row)
                    _print_row(row, impls)
                    if profile:
                        row["profile"] = {
                            impl: {
                                kind: profile_pass(fns[impl], device)
                                for kind, fns in passes.items()
                            }
                            for impl in impls
                        }
                        _print_profile(row["profile"])
                    # written after every configuration, so a cut-off run keeps what it measured
                    payload = {"suite": "block", **common.environment(device), "results": results}
                    path = common.write(name, payload)
    payload = {"suite": "block", **common.environment(device), "results": results}
    path = common.write(name, payload)
    print(f"wrote {path}")
    try:
        plot(payload, path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")
    except ImportError:
        pass
    return payload


def _ratios(t_fwd, t_fb, ratio) -> dict:
    """``{"forward": {impl: r}, "forward_backward": {impl: r}}`` with ``r = ratio(medians,
    impl)``."""
    out = {}
    for kind, t in (("forward", t_fwd), ("forward_backward", t_fb)):
        medians = {i: v["median_s"] for i, v in t.items()}
        out[kind] = {i: ratio(medians, i) for i in medians}
    return out


def over_floor(t_fwd, t_fb) -> dict:
    """Each implementation's median over the floor's, per pass."""
    return _ratios(t_fwd, t_fb, lambda t, i: t[i] / t["floor"])


def faster_than_hand(t_fwd, t_fb) -> dict:
    """The hand loop's median over each implementation's, per pass."""
    return _ratios(t_fwd, t_fb, lambda t, i: t["hand"] / t[i])


def _print_row(row, impls):
    fb, fw = row["forward_backward_ms"], row["forward_ms"]
    over, faster = row["over_floor"], row["faster_than_hand"]
    print(
        f"\n{row['shape']} (batch {row['batch']}, {row['channels']} ch, {row['pixels']} px), {row['basis']} K={row['K']}, "
        f"{row['scheme']} n_steps={row['n_steps']}; contnet vs hand rel. diff {row['contnet_vs_hand_rel_diff']:.1e}"
    )
    rows = []
    for impl in impls:
        rows.append(
            [
                impl,
                f"{fw[impl]:.2f}",
                f"{over['forward'][impl]:.3f}",
                f"{fb[impl]:.2f}",
                f"{over['forward_backward'][impl]:.3f}",
                f"{row['paired_over_floor']['forward_backward'][impl]:.3f}",
                f"{faster['forward_backward'][impl]:.2f}" if faster else "",
                f"{row['memory_bytes'][impl] / 2**20:.1f}",
            ]
        )
    print(
        format_table(
            rows,
            [
                "impl",
                "fwd ms",
                "fwd/floor",
                "fwd+bwd ms",
                "fwd+bwd/floor",
                "paired",
                "hand/impl",
                f"MiB ({row['memory_kind']})",
            ],
        )
    )


def plot(payload, path):

    plt = pyplot()
    rows = payload["results"]
    impls = [i for i in IMPLS if i in rows[0]["forward_backward_ms"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        vals = [r["over_floor"]["forward_backward"][impl] for r in rows]
        ax.bar([i + j * width for i in range(len(rows))], vals, width, label=impl)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(rows))],
        [
            f"{r['shape']}\n{r['basis'][:5]} K={r['K']}\n{r['scheme']} n={r['n_steps']}"
            for r in rows
        ],
        fontsize=7,
    )
    ax.set_ylabel("forward+backward time / floor")
    ax.set_title(f"{payload['device_name']} -- lower is better, 1 = convolutions only")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def inference(
    device="cuda", shapes=("stage1", "stage2", "stage3"), batch=8, scheme="rk4", K=16, rounds=5
):
    """Small-batch inference (no grad): contnet eager, contnet replayed from a CUDA graph
    (:func:`cuda_graph`), the hand loop eager. Launches and Python dominate here."""
    if device != "cuda":
        print("inference: CUDA graphs need a GPU; nothing to measure on the CPU")
        return None
    common.setup(device)
    results = []
    for shape_name in shapes:
        _, c, p = SHAPES[shape_name]
        prob = Problem(batch, c, p, "piecewise_constant", K, scheme, K, device, True)
        prob.block.eval()
        x = prob.x.detach()
        graphed = cuda_graph(prob.block, x)
        th1, th2 = prob.theta1.detach(), prob.theta2.detach()

        def eager(f, x=x, th1=th1, th2=th2):
            def run():
                with torch.no_grad():
                    return f(x, th1, th2)

            return run

        t = common.time_side_by_side(
            {
                "contnet": eager(prob.contnet),
                "contnet_graph": lambda g=graphed, x=x: g(x),
                "hand": eager(prob.hand),
            },
            rounds=rounds,
            min_run_time=0.3,
            device=device,
        )
        ms = {k: v["median_s"] * 1e3 for k, v in t.items()}
        row = {
            "shape": shape_name,
            "batch": batch,
            "channels": c,
            "pixels": p,
            "scheme": scheme,
            "n_steps": K,
            "median_ms": ms,
            "timings": t,
        }
        row["hand_over_graph"] = ms["hand"] / ms["contnet_graph"]
        results.append(row)
        print(
            f"{shape_name} batch {batch}: contnet {ms['contnet']:.3f} ms, graph {ms['contnet_graph']:.3f} ms, "
            f"hand {ms['hand']:.3f} ms; hand/graph {row['hand_over_graph']:.2f}"
        )
    payload = {"suite": "inference", **common.environment(device), "results": results}
    print(f"wrote {common.write(f'inference-{common.device_tag(device)}.json', payload)}")
    return payload


def inference_main(argv=None):
    p = argparse.ArgumentParser(description=inference.__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    inference(a.device, batch=a.batch, rounds=a.rounds)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        choices=list(SHAPES),
        help="default: the three CIFAR stages (+ wide on a GPU)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="override every shape's batch (the CPU default is 16 for the CIFAR and wide "
        "shapes; host keeps its batch 1 unless this is given)",
    )
    p.add_argument("--bases", nargs="+", default=["piecewise_constant", "fem_linear"])
    p.add_argument(
        "--schemes", nargs="+", default=None, help="default: rk4 (CPU); euler midpoint rk4 (GPU)"
    )
    p.add_argument(
        "--K",
        type=int,
        nargs="+",
        default=None,
        help="K = n_steps values (default: 16 on the CPU, 4 16 on a GPU)",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        default=list(IMPLS),
        choices=list(IMPLS),
        help="implementations to time (floor always: every ratio is to it)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds (default: 9 on the CPU, whose rounds vary by 10-30%%; 5 on a "
        "GPU, whose eager passes wait on a host whose rounds vary by up to 60%%)",
    )
    p.add_argument("--min-run-time", type=float, default=None, help="default: 0.3 s CPU, 0.5 s GPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tag", default=None, help="suffix of the JSON file name (default: the device)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one pass of each implementation (operators, kernels, device "
        "busy time, CUDA runtime calls) into the JSON",
    )
    a = p.parse_args(argv)
    d = defaults(a.device)
    run(
        device=a.device,
        shapes=a.shapes or d["shapes"],
        batch=a.batch,
        default_batch=d["default_batch"],
        bases=a.bases,
        schemes_=a.schemes or d["schemes_"],
        ks=a.K or d["ks"],
        impls=tuple(a.impls),
        rounds=a.rounds or d["rounds"],
        min_run_time=a.min_run_time or d["min_run_time"],
        channels_last=a.channels_last,
        tag=a.tag,
        profile=a.profile,
    )


def defaults(device: str) -> dict:
    """What ``contnet bench block`` runs when an option is not given: on a GPU the CIFAR
    stages and ``wide``, three schemes, K 4 and 16, 5 rounds; on the CPU (seconds a pass at
    batch 128) the CIFAR stages at batch 16, rk4, K 16, 9 rounds. ``host`` only when asked."""
    if str(device).startswith("cuda"):
        return dict(
            shapes=[s for s in SHAPES if s != "host"],
            default_batch=None,
            schemes_=["euler", "midpoint", "rk4"],
            ks=[4, 16],
            rounds=5,
            min_run_time=0.5,
        )
    return dict(
        shapes=["stage1", "stage2", "stage3"],
        default_batch=16,
        schemes_=["rk4"],
        ks=[16],
        rounds=9,
        min_run_time=0.3,
    )


if __name__ == "__main__":
    main()
