"""``contnet bench block``: a continuous block against pure-PyTorch stepping, forward and
forward+backward, every implementation of :mod:`contnet.bench.block_problem` timed side
by side in one run.

Reported per configuration: median ms of forward (no grad) and forward+backward (grads of
the input and the weights), their ratios to ``floor`` and to ``hand``, and the memory of
forward+backward (peak allocated above what was allocated before it,
:func:`contnet.bench.common.peak_bytes`).
"""

from __future__ import annotations

import argparse

import torch

from .. import basis as basis_lib
from .. import schemes as schemes_lib
from ..argtypes import device, file_tag, positive_float, positive_int
from ..report import format_table, pyplot, save_figure
from . import common
from .block_problem import IMPLS, SHAPES, Problem, measure, register_classic_rk4
from .feature_problem import FEATURE_SHAPES, FeatureProblem
from .profiling import print_profile, profile_pass


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
    units=("conv",),
):
    """Time every configuration (unit x layout x shape x basis x scheme x K) in every
    implementation and write the JSON (and a plot) under the results folder."""
    impls = _available(impls)
    common.setup(device)
    # both layouts unless one is asked for: channels_last, the faster layout of these
    # convolutions on the CPU too (oneDNN), whose floor is the limit; and NCHW, what a
    # user passes by default, against its own floor
    layouts = (True, False) if channels_last is None else (channels_last,)
    name = f"block-{tag or common.device_tag(device)}.json"
    results = []
    for config in _problems(units, layouts, shapes, batch, default_batch, bases, schemes_, ks):
        prob, row = _problem(config, device)
        t_fwd, t_fb, mem, check, passes = measure(prob, impls, device, rounds, min_run_time)
        row.update(_timings(t_fwd, t_fb), memory_bytes=mem, memory_kind="peak allocated")
        row["contnet_vs_hand_rel_diff"] = check
        results.append(row)
        _print_row(row, impls)
        if profile:
            row["profile"] = {
                impl: {kind: profile_pass(fns[impl], device) for kind, fns in passes.items()}
                for impl in impls
            }
            print_profile(row["profile"])
        # written after every configuration, so a cut-off run keeps what it measured
        payload = {"suite": "block", **common.environment(device), "results": results}
        path = common.write(name, payload)
    print(f"wrote {path}")
    try:
        plot(payload, path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")
    except ImportError:
        pass
    return payload


def _problem(config, device):
    """The problem of one configuration (see :func:`_problems`) and its row's settings."""
    unit, layout, shape, b, basis, scheme, K, K_eff = config
    if unit == "conv":
        _, c, p = SHAPES[shape]
        prob = Problem(b, c, p, basis, K_eff, scheme, K, device, layout)
    else:
        _, p, c = FEATURE_SHAPES[unit]
        prob = FeatureProblem(unit, b, p, c, basis, K_eff, scheme, K, device)
    row = {"unit": unit, "shape": shape, "batch": b, "channels": c, "pixels": p}
    row.update(basis=basis, K=K_eff, scheme=scheme, n_steps=K, channels_last=layout)
    return prob, row


def _available(impls) -> tuple:
    """The implementations to time: the floor always (every ratio is to it), torchdiffeq
    where it is installed (an optional extra: ``pip install 'contnet[bench]'``)."""
    impls = ("floor",) + tuple(i for i in impls if i != "floor")
    if "torchdiffeq" in impls:
        try:
            register_classic_rk4()
        except ImportError:
            print("torchdiffeq is not installed (pip install torchdiffeq): skipping it")
            impls = tuple(i for i in impls if i != "torchdiffeq")
    return impls


def _problems(units, layouts, shapes, batch, default_batch, bases, schemes_, ks):
    """``(unit, channels_last, shape, batch, basis, scheme, n_steps, K)`` of every
    configuration: the conv unit in each layout and shape; the feature units (``mlp``,
    ``transformer``, their own shape, ``channels_last`` None) once each."""
    for unit in units:
        if unit == "conv":
            for layout in layouts:
                for cfg in _configurations(shapes, batch, default_batch, bases, schemes_, ks):
                    yield (unit, layout, *cfg)
        else:
            b = batch or FEATURE_SHAPES[unit][0]
            for cfg in _configurations([unit], b, None, bases, schemes_, ks):
                yield (unit, None, *cfg)


def _configurations(shapes, batch, default_batch, bases, schemes_, ks):
    """``(shape, batch, basis, scheme, n_steps, K)`` of every configuration: an explicit
    batch for every shape, else the default one, which ``host`` (whose point is a
    negligible amount of arithmetic) does not take; ``fem_linear`` has at least 2 nodes."""
    for shape in shapes:
        b = batch or (default_batch if shape != "host" else None) or SHAPES[shape][0]
        if shape in FEATURE_SHAPES:
            b = batch
        for basis in bases:
            for scheme in schemes_:
                for K in ks:
                    yield shape, b, basis, scheme, K, max(K, 2) if basis == "fem_linear" else K


def _timings(t_fwd, t_fb) -> dict:
    """A row's timings: medians, every round, and the ratios to the floor (paired per
    round, and of the medians) and of the hand loop to each implementation."""
    return {
        "forward_ms": {k: v["median_s"] * 1e3 for k, v in t_fwd.items()},
        "forward_backward_ms": {k: v["median_s"] * 1e3 for k, v in t_fb.items()},
        "timings": {"forward": t_fwd, "forward_backward": t_fb},
        "paired_over_floor": {
            kind: {i: common.paired_ratio(t, i, "floor") for i in t}
            for kind, t in (("forward", t_fwd), ("forward_backward", t_fb))
        },
        "over_floor": over_floor(t_fwd, t_fb),
        "faster_than_hand": faster_than_hand(t_fwd, t_fb) if "hand" in t_fb else None,
    }


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
    if row["unit"] == "conv":
        what = f"{row['channels']} ch, {row['pixels']} px, "
        what += "channels_last" if row["channels_last"] else "NCHW"
    else:
        what = f"{row['pixels']} tokens, dim {row['channels']}"
    print(
        f"\n{row['shape']} (batch {row['batch']}, {what}), {row['basis']} K={row['K']}, "
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
            f"{r['shape']}{_layout(r)}\n{r['basis'][:5]} K={r['K']}\n{r['scheme']} n={r['n_steps']}"
            for r in rows
        ],
        fontsize=7,
    )
    ax.set_ylabel("forward+backward time / floor")
    ax.set_title(f"{payload['device_name']} -- lower is better, 1 = convolutions only")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _layout(row) -> str:
    return {True: "", False: " NCHW"}.get(row.get("channels_last"), "")


def main(argv=None):
    a = _parser().parse_args(argv)
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
        units=tuple(a.units),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contnet bench block",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        choices=list(SHAPES),
        help="default: the three CIFAR stages (+ wide on a GPU)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help="override every shape's batch (the CPU default is 16 for the CIFAR and wide "
        "shapes; host keeps its batch 1 unless this is given)",
    )
    p.add_argument(
        "--bases",
        nargs="+",
        default=["piecewise_constant", "fem_linear"],
        choices=basis_lib.names(),
    )
    p.add_argument(
        "--schemes",
        nargs="+",
        default=None,
        choices=schemes_lib.names(),
        help="default: rk4 (CPU); euler midpoint rk4 (GPU)",
    )
    p.add_argument(
        "--K",
        type=positive_int,
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
        type=positive_int,
        default=None,
        help="interleaved rounds (default: 9 on the CPU, whose rounds vary by 10-30%%; 5 on a "
        "GPU, whose eager passes wait on a host whose rounds vary by up to 60%%)",
    )
    p.add_argument(
        "--min-run-time",
        type=positive_float,
        default=None,
        help="default: 0.3 s CPU, 0.5 s GPU",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the conv unit in channels_last only (or NCHW only); default: both layouts",
    )
    p.add_argument(
        "--units",
        nargs="+",
        default=["conv"],
        choices=["conv", *FEATURE_SHAPES],
        help="the units to time: conv (ConvUnit), mlp (MLPUnit), transformer "
        "(TransformerUnit); default conv",
    )
    p.add_argument(
        "--tag",
        type=file_tag,
        default=None,
        help="suffix of the JSON file name (default: the device)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one pass of each implementation (operators, kernels, device "
        "busy time, CUDA runtime calls) into the JSON",
    )
    return p


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
