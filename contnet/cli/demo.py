"""``contnet demo``: the main job on the digits, as ``make demo`` runs it."""

from __future__ import annotations

import pathlib
import time

import torch

from .. import ops
from ..evaluation import plots
from ..report import format_table, write_json
from .commands import load_dataset, run_compress, run_eval, run_train, train_config


def cmd_demo(args) -> int:
    """The main job on digits: refined training against training at the final depth from
    the start, the manifestation table, compression, plots."""

    out = pathlib.Path(args.out)
    t_all = time.perf_counter()
    torch.set_num_threads(torch.get_num_threads())
    if not args.quick and args.epochs < 3:
        raise SystemExit(
            f"contnet demo: --epochs must be >= 3 (refinements after a third and two thirds), got {args.epochs}"
        )
    epochs, refine_at = (
        (6, (2, 4)) if args.quick else (args.epochs, (args.epochs // 3, 2 * args.epochs // 3))
    )
    k_final = 4
    args.data, args.data_dir = "digits", None
    dataset = load_dataset(args)
    print(
        f"contnet demo -- {dataset.describe()}; kernels: {ops.backend()}; {torch.get_num_threads()} threads\n"
    )
    common = dict(
        epochs=epochs,
        scheme="rk4",
        basis="piecewise_constant",
        progress=not args.no_progress,
        n_steps=None,
    )

    print(
        f"== 1. refined training: K = 1 -> 2 -> 4 (refined at epochs {refine_at[0] + 1} and {refine_at[1] + 1}), rk4, {epochs} epochs"
    )
    refined = run_train(
        args,
        train_config(args, n_basis=1, refine_at=refine_at, **common),
        out / "refined",
        dataset,
    )
    print(
        f"\n== 2. the same training at the final depth K = {k_final} from the start, {epochs} epochs"
    )
    direct = run_train(
        args, train_config(args, n_basis=k_final, refine_at=(), **common), out / "direct", dataset
    )

    side = [
        [
            "refined 1->2->4",
            f"{refined['wall_time_s']:.1f}",
            f"{100 * refined['test_acc']:.2f}",
            f"{100 * max(h['test_acc'] for h in refined['history']):.2f}",
        ],
        [
            f"direct K={k_final}",
            f"{direct['wall_time_s']:.1f}",
            f"{100 * direct['test_acc']:.2f}",
            f"{100 * max(h['test_acc'] for h in direct['history']):.2f}",
        ],
    ]
    print("\nrefinement against training at the final depth (same epochs, same machine, one run):")
    print(format_table(side, ["run", "wall time s", "final test acc %", "best test acc %"]))
    speedup = direct["wall_time_s"] / refined["wall_time_s"]
    print(
        f"refined training took {1 / speedup:.2f}x the time of direct training ({speedup:.2f}x faster)"
    )
    plots.training_curves(
        {"refined 1->2->4": refined["history"], f"direct K={k_final}": direct["history"]},
        out / "training_curves.png",
    )

    print("\n== 3. manifestations of the refined model: schemes x n_steps (same weights)")
    model = refined["model"]
    table = run_eval(
        model,
        dataset,
        out,
        ["euler", "midpoint", "rk4"],
        [1, 2, 4, 8, 16, 32, 64],
        ("rk4", 128),
        device=args.device,
    )
    print(
        "(the drift falls with n_steps at each scheme's order while the steps resolve the rate; a ReLU\n"
        " rate is only piecewise smooth in x, which caps the observed order near 2 even for rk4)"
    )

    print(
        "\n== 4. compression of the refined model (projection onto fewer nodes, other schemes, fewer steps)"
    )
    comp = run_compress(
        model, dataset, out, args.max_drop, device=args.device, train_cfg=refined["config"]
    )
    half = next(
        c
        for c in comp["candidates"]
        if c["n_basis"] == comp["original"]["n_basis"]
        and c["scheme"] == "rk4"
        and c["n_steps"] == comp["original"]["n_steps"] // 2
    )
    half_test = table["rows"]["rk4"]["accuracy"].get(half["n_steps"])
    print(
        f"half the steps (rk4, n_steps {comp['original']['n_steps']} -> {half['n_steps']}): validation "
        f"accuracy {100 * half['val']:.2f}% ({half['drop_points']:+.2f} points; within {args.max_drop} "
        f"point: {'yes' if half['drop_points'] <= args.max_drop else 'no'})"
        + (f", test accuracy {100 * half_test:.2f}% (table 3)" if half_test is not None else "")
        + f", latency {half['latency_ms']:.2f} ms vs {comp['original']['latency_ms']:.2f} ms"
    )
    plots.theta_over_depth(model, out / "theta.png")
    summary = {
        "data": dataset.describe(),
        "backend": ops.backend(),
        "threads": torch.get_num_threads(),
        "refined": {k: refined[k] for k in ("config", "test_acc", "wall_time_s", "history")},
        "direct": {k: direct[k] for k in ("config", "test_acc", "wall_time_s", "history")},
        "refined_speedup": speedup,
        "manifestations": table,
        "compression": comp,
        "half_steps": half,
        "total_time_s": time.perf_counter() - t_all,
    }
    write_json(out / "demo.json", summary)
    print(
        f"\nplots: {out}/training_curves.png, manifestations.png, theta.png; summary: {out}/demo.json"
    )
    print(f"demo finished in {summary['total_time_s']:.0f}s")
    return 0
