"""``contnet demo``: the main job on the digits, as ``make demo`` runs it."""

from __future__ import annotations

import pathlib
import time

import torch

from .. import ops, schemes
from ..block import blocks_of
from ..evaluation import fixed_evaluations, plots
from ..provenance import command_line, provenance
from ..report import OutputError, atomic_write, check_writable, format_table, write_json
from ..training.rundir import RUN_FILES, RunLock
from .commands import load_dataset, run_compress, run_eval, run_train
from .options import config_from

K_FINAL = 4  # the depth the demo trains to


def cmd_demo(args) -> int:
    """The main job on digits: refined training against training at the final depth from
    the start, the manifestation table, compression, plots."""
    out = pathlib.Path(args.out)
    t_all = time.perf_counter()
    if not args.quick and args.epochs < 3:
        raise SystemExit(
            "contnet demo: --epochs must be >= 3 (refinements after a third and two thirds), "
            f"got {args.epochs}"
        )
    args.data, args.data_dir = "digits", None
    check_writable(out, "--out", files=("demo.json", *RUN_FILES))
    with RunLock(out):  # one demo at a time in a folder
        return _demo(args, out, t_all)


def _demo(args, out: pathlib.Path, t_all: float) -> int:
    _claim_demo_folder(out)
    args.overwrite = True  # the demo replaces its own runs (runs/demo by default)
    dataset = load_dataset(args)
    threads = torch.get_num_threads()
    print(f"contnet demo -- {dataset.describe()}; kernels: {ops.backend()}; {threads} threads\n")
    refined, direct, speedup = _training(args, dataset, out)
    print("\n== 3. manifestations of the refined model: schemes x n_steps (same weights)")
    model = refined["model"]
    steps = [1, 2, 4, 8, 16, 32, 64]
    table = run_eval(
        model, dataset, out, ["euler", "midpoint", "rk4"], steps, ("rk4", 128),
        device=args.device, rtols=(1e-3,),
    )  # fmt: skip
    print(_adaptive_line(model, table))
    print(
        "(the drift falls with n_steps at each scheme's order while the steps resolve the rate; a ReLU\n"
        " rate is only piecewise smooth in x, which caps the observed order near 2 even for rk4)"
    )
    comp, half = _compression(args, model, dataset, out, refined, table)
    plots.theta_over_depth(model, out / "theta.png")
    summary = {
        "provenance": provenance(args.device),
        "data": dataset.describe(),
        "backend": ops.backend(),
        "threads": threads,
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


def _adaptive_line(model, table) -> str:
    """One line: the model run to a tolerance, per input, against its trained manifestation."""
    row = next(r for r in table["adaptive"]["rows"] if r["mode"] == "per_input")
    blocks = blocks_of(model)
    scheme, n = schemes.name_of(blocks[0].scheme), blocks[0].n_steps
    own = fixed_evaluations(model, blocks[0].scheme, n)
    return (
        f"adaptive: dopri5 to rtol {row['rtol']:.0e}, each input its own steps: "
        f"{100 * row['accuracy']:.2f}% at {row['evaluations_mean']:.1f} rate evaluations per "
        f"input (at most {row['evaluations_max']}); trained as {scheme} with {n} steps: {own}"
    )


#: written into OUT when a demo starts: the folder is the demo's to replace
DEMO_MARK = ".contnet-demo"
_DEMO_RUNS = ("refined", "direct")


def _claim_demo_folder(out: pathlib.Path) -> None:
    """The demo replaces what an earlier demo wrote into ``out`` (finished or killed), and
    nothing else: a folder holding another run (a ``contnet train`` run's files in ``out``
    or in the demo's run folders, and no sign of a demo) is refused. Before any work the
    folder is marked as the demo's and an earlier demo's summary and reports are removed,
    so that a demo stopped midway never leaves a summary of runs it has replaced."""
    theirs = [
        str(d.relative_to(out) / f)
        for d in (out, *(out / r for r in _DEMO_RUNS))
        for f in RUN_FILES
        if (d / f).exists()
    ]
    ours = (out / "demo.json").exists() or (out / DEMO_MARK).exists()
    if theirs and not ours:
        raise OutputError(
            f"--out {out} holds a run that is not a demo's ({', '.join(theirs)}): the demo "
            "would replace its files; choose another --out"
        )
    atomic_write(out / DEMO_MARK, lambda f: f.write_text(command_line() + "\n"))
    for name in ("demo.json", *RUN_FILES):  # the demo's own files in OUT (its runs below)
        (out / name).unlink(missing_ok=True)


def _training(args, dataset, out):
    """Steps 1 and 2: refined training (K = 1 -> 2 -> 4) and training at K = 4 from the
    start, side by side. Returns both runs and the refined run's speedup."""
    epochs, refine_at = (
        (6, (2, 4)) if args.quick else (args.epochs, (args.epochs // 3, 2 * args.epochs // 3))
    )
    common = dict(epochs=epochs, scheme="rk4", basis="piecewise_constant", n_steps=None)
    print(
        f"== 1. refined training: K = 1 -> 2 -> 4 (refined at epochs {refine_at[0] + 1} and "
        f"{refine_at[1] + 1}), rk4, {epochs} epochs"
    )
    cfg = config_from(args, n_basis=1, refine_at=refine_at, **common)
    refined = run_train(args, cfg, out / "refined", dataset)
    print(
        f"\n== 2. the same training at the final depth K = {K_FINAL} from the start, {epochs} epochs"
    )
    cfg = config_from(args, n_basis=K_FINAL, refine_at=(), **common)
    direct = run_train(args, cfg, out / "direct", dataset)
    rows = [
        [name, f"{r['wall_time_s']:.1f}", f"{100 * r['test_acc']:.2f}"]
        + [f"{100 * max(h['test_acc'] for h in r['history']):.2f}"]
        for name, r in (("refined 1->2->4", refined), (f"direct K={K_FINAL}", direct))
    ]
    print("\nrefinement against training at the final depth (same epochs, same machine, one run):")
    print(format_table(rows, ["run", "wall time s", "final test acc %", "best test acc %"]))
    speedup = direct["wall_time_s"] / refined["wall_time_s"]
    print(
        f"refined training took {1 / speedup:.2f}x the time of direct training ({speedup:.2f}x faster)"
    )
    plots.training_curves(
        {"refined 1->2->4": refined["history"], f"direct K={K_FINAL}": direct["history"]},
        out / "training_curves.png",
    )
    return refined, direct, speedup


def _compression(args, model, dataset, out, refined, table):
    """Step 4: compression of the refined model, and its rk4 candidate at half the steps
    (with the test accuracy the manifestation table measured for it)."""
    print(
        "\n== 4. compression of the refined model (projection onto fewer nodes, other schemes, "
        "fewer steps)"
    )
    comp = run_compress(
        model, dataset, out, args.max_drop, device=args.device, train_cfg=refined["config"]
    )
    o = comp["original"]
    half = next(
        c
        for c in comp["candidates"]
        if c["n_basis"] == o["n_basis"]
        and c["scheme"] == "rk4"
        and c["n_steps"] == o["n_steps"] // 2
    )
    half_test = table["rows"]["rk4"]["accuracy"].get(half["n_steps"])
    print(
        f"half the steps (rk4, n_steps {o['n_steps']} -> {half['n_steps']}): validation "
        f"accuracy {100 * half['val']:.2f}% ({half['drop_points']:+.2f} points; within {args.max_drop} "
        f"point: {'yes' if half['drop_points'] <= args.max_drop else 'no'})"
        + (f", test accuracy {100 * half_test:.2f}% (table 3)" if half_test is not None else "")
        + f", latency {half['latency_ms']:.2f} ms vs {o['latency_ms']:.2f} ms"
    )
    return comp, half
