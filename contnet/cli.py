"""Command line of contnet: ``contnet <command>`` or ``python -m contnet <command>``.

Commands: ``train`` (with refinement in depth), ``eval`` (the manifestation table),
``compress`` (fewer basis nodes / steps within an accuracy budget), ``demo`` (all of it on
the digits data, as ``make demo`` runs it). Each prints a summary table and writes JSON
(and PNG plots) to its output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import torch

from . import data as data_lib
from . import ops, schemes
from .basis import FAMILIES
from .block import blocks_of
from .layers import ACTIVATIONS

__all__ = ["main", "build_parser", "format_table"]


def format_table(rows, header) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join(
        [line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]]
    )


def _write_json(path: pathlib.Path, payload) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def _load_dataset(args):
    try:
        return data_lib.load(args.data, args.data_dir, seed=0)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"contnet: cannot load data: {e}") from None


# ----------------------------------------------------------------------------- train
def _train_config(args, **overrides):
    from .train import TrainConfig

    kw = dict(
        data=args.data,
        data_dir=args.data_dir,
        widths=tuple(args.widths),
        act=args.act,
        norm=None if args.norm == "none" else args.norm,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    # the depth options, where not given here (the demo's parser has none: it gives them all)
    for name in ("basis", "n_basis", "scheme", "n_steps", "refine_at"):
        if name not in overrides:
            kw[name] = getattr(args, name)
    kw.update(overrides)
    try:
        return TrainConfig(**kw)
    except ValueError as e:
        raise SystemExit(f"contnet train: {e}") from None


def _history_table(history) -> str:
    rows = [
        [
            h["epoch"],
            h["n_basis"],
            h["n_steps"],
            f"{h['train_loss']:.4f}",
            f"{100 * h['test_acc']:.2f}",
            f"{h['epoch_time_s']:.1f}",
            "yes" if h["refined"] else "",
        ]
        for h in history
    ]
    return format_table(
        rows, ["epoch", "K", "n_steps", "train loss", "test acc %", "time s", "refined"]
    )


def run_train(args, cfg=None, out=None, dataset=None, log=print) -> dict:
    from . import plots
    from .train import train

    cfg = cfg or _train_config(args)
    out = pathlib.Path(out or args.out)
    dataset = dataset or _load_dataset(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        held = dataset.with_validation(cfg.val_fraction).describe()
        log(f"training on {held}; kernels: {ops.backend()}; output: {out}")
    result = train(cfg, out, dataset, resume=getattr(args, "resume", False), log=log)
    hist = result["history"]
    summary = {
        "config": cfg.to_json(),
        "history": hist,
        "test_acc": result["test_acc"],
        "wall_time_s": result["wall_time_s"],
        "checkpoint": result["checkpoint"],
        "world_size": result["world_size"],
    }
    for key in ("weight_spread", "buffer_spread"):
        if key in result:
            summary[key] = result[key]
    if result["rank"] != 0:  # rank 0 reports for every process
        return {**summary, "model": result["model"]}
    log("\n" + _history_table(hist))
    _write_json(out / "train.json", summary)
    plots.training_curves({"run": hist}, out / "training_curves.png")
    plots.theta_over_depth(result["model"], out / "theta.png")
    log(
        f"test accuracy {100 * result['test_acc']:.2f}%  wall time {result['wall_time_s']:.1f}s  -> {out}/train.json, training_curves.png, theta.png"
    )
    return {**summary, "model": result["model"]}


# ----------------------------------------------------------------------------- eval
def _manifestation_tables(table) -> str:
    rows = table["rows"]
    steps = list(next(iter(rows.values()))["drift"])
    out = []
    if next(iter(rows.values()))["accuracy"]:
        acc = [[s] + [f"{100 * r['accuracy'][n]:.2f}" for n in steps] for s, r in rows.items()]
        out.append("test accuracy (%)\n" + format_table(acc, ["scheme"] + [str(n) for n in steps]))
    drift = [
        [s] + [f"{r['drift'][n]:.1e}" for n in steps] + [f"{r['order']:.2f}"]
        for s, r in rows.items()
    ]
    ref = table["reference"]
    out.append(
        f"relative output drift against {ref[0]} with {ref[1]} steps (order: fitted slope of log drift)\n"
        + format_table(drift, ["scheme"] + [str(n) for n in steps] + ["order"])
    )
    return "\n\n".join(out)


def run_eval(
    model, dataset, out: pathlib.Path, schemes_, steps, reference, log=print, device="cpu"
) -> dict:
    from . import plots
    from .manifestation import manifestation_table

    table = manifestation_table(
        model, dataset.x_test, dataset.y_test, schemes_, steps, reference, device=device
    )
    log(_manifestation_tables(table))
    _write_json(out / "eval.json", table)
    plots.manifestation_heatmap(table, out / "manifestations.png")
    log(f"-> {out}/eval.json, manifestations.png")
    return table


def _model_from(args):
    from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint

    try:
        payload = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(
            payload, n_basis=getattr(args, "n_basis", None), device=args.device
        )
    except CheckpointError as e:
        raise SystemExit(f"contnet: {e}") from None
    train_cfg = payload["meta"].get("train") or {}
    if args.data is None:
        args.data = train_cfg.get("data", "digits")
        args.data_dir = args.data_dir or train_cfg.get("data_dir")
    return model, payload


def _reference(pair) -> tuple[str, int]:
    """``--reference SCHEME N_STEPS`` checked: a scheme name and an int >= 1."""
    name, n = pair
    try:
        schemes.get(name)
        n = int(n)
    except (ValueError, KeyError) as e:
        raise SystemExit(f"contnet eval: --reference takes SCHEME N_STEPS: {e}") from None
    if n < 1:
        raise SystemExit(f"contnet eval: --reference N_STEPS must be >= 1, got {n}")
    return name, n


def cmd_eval(args) -> int:
    from .manifestation import schemes_to_try

    reference = _reference(args.reference)
    model, _ = _model_from(args)
    dataset = _load_dataset(args)
    out = pathlib.Path(args.out or pathlib.Path(args.checkpoint).parent)
    try:
        run_eval(
            model,
            dataset,
            out,
            args.schemes or schemes_to_try(model),
            args.steps,
            reference,
            device=args.device,
        )
    except ValueError as e:  # a scheme the model cannot take (lm without its learned k)
        raise SystemExit(f"contnet eval: {e}") from None
    return 0


# ----------------------------------------------------------------------------- compress
def _compress_table(result) -> str:
    o = result["original"]

    def row(c, drop, mark):
        return [
            c["n_basis"],
            c["scheme"],
            c["n_steps"],
            f"{c['parameters']:,}",
            f"{100 * c['val']:.2f}",
            drop,
            f"{c['latency_ms']:.2f}",
            mark,
        ]

    rows = [row(o, "", "original")]
    for c in result["candidates"]:
        fits = c["drop_points"] <= result["max_drop_points"]
        mark = "<- choice" if c is result["choice"] else "" if fits else "too lossy"
        rows.append(row(c, f"{c['drop_points']:+.2f}", mark))
    header = ["K", "scheme", "n_steps", "params", f"val {result['metric']} %", "drop pts"]
    return format_table(rows, header + [f"ms/{result['latency_batch']}", ""])


def split_for_compression(dataset, train_cfg: dict, val_fraction, log=print):
    """``(val, test)`` pairs for :func:`contnet.compression.compress`: the validation split
    that training held out (``val_fraction``, default the checkpoint's), and the test set."""
    trained = train_cfg.get("val_fraction", 0.0)
    fraction = trained if val_fraction is None else val_fraction
    if not fraction:
        fraction = 0.1
        log(
            "note: the model was trained on all training images (val_fraction 0): its "
            f"candidates are chosen on {fraction:.0%} of them, which it has seen"
        )
    elif fraction > trained:
        log(
            f"note: the validation split ({fraction:.0%}) is larger than the one held out in "
            f"training ({trained:.0%}): it includes images the model trained on"
        )
    data = dataset.with_validation(fraction)
    return (data.x_val, data.y_val), (data.x_test, data.y_test)


def run_compress(
    model,
    dataset,
    out: pathlib.Path,
    max_drop,
    n_basis=None,
    schemes_=None,
    steps=None,
    log=print,
    device="cpu",
    train_cfg=None,
    val_fraction=None,
) -> dict:
    from .compression import compress

    val, test = split_for_compression(dataset, train_cfg or {}, val_fraction, log)
    log(f"candidates (chosen on {len(val[0])} validation images, not the test set):")
    result = compress(
        model,
        val,
        test=test,
        max_drop=max_drop,
        n_basis=n_basis,
        schemes=schemes_,
        steps=steps,
        log=log,
        device=device,
    )
    log("\n" + _compress_table(result))
    c, o = result["choice"], result["original"]
    if c:
        log(
            f"fastest within {max_drop} point(s) on validation: K={c['n_basis']} {c['scheme']} "
            f"n_steps={c['n_steps']}: {c['latency_ms']:.2f} ms vs {o['latency_ms']:.2f} ms "
            f"({o['latency_ms'] / c['latency_ms']:.2f}x faster), validation accuracy "
            f"{100 * c['val']:.2f}% ({c['drop_points']:+.2f} points)"
        )
        log(
            f"test accuracy of the choice {100 * c['test']:.2f}% (original {100 * o['test']:.2f}%; "
            "measured after choosing)"
        )
    else:
        log(f"no candidate within {max_drop} point(s) of the original validation accuracy")
    _write_json(out / "compress.json", result)
    log(f"-> {out}/compress.json")
    return result


def cmd_compress(args) -> int:
    model, payload = _model_from(args)
    dataset = _load_dataset(args)
    out = pathlib.Path(args.out or pathlib.Path(args.checkpoint).parent)
    try:
        result = run_compress(
            model,
            dataset,
            out,
            args.max_drop,
            args.candidate_n_basis,
            args.schemes,
            args.steps,
            device=args.device,
            train_cfg=payload["meta"].get("train") or {},
            val_fraction=args.val_fraction,
        )
    except ValueError as e:  # a scheme the model cannot take (lm without its learned k)
        raise SystemExit(f"contnet compress: {e}") from None
    if args.save and result["choice"]:
        from .checkpoint import save_checkpoint
        from .manifestation import set_manifestation
        from .models import project

        c = result["choice"]
        if c["n_basis"] != result["original"]["n_basis"]:
            project(model, c["n_basis"])
        set_manifestation(blocks_of(model), c["scheme"], c["n_steps"])
        save_checkpoint(
            args.save,
            model,
            config=payload["meta"].get("train"),
            epoch=payload["meta"].get("epoch", 0),
            extra={"compressed_from": str(args.checkpoint)},
        )
        print(f"compressed model -> {args.save}")
    elif args.save:
        print(f"no candidate within {args.max_drop} point(s): nothing saved to {args.save}")
    return 0


def cmd_train(args) -> int:
    from .train import CheckpointError

    try:
        run_train(args)
    except CheckpointError as e:  # a --resume that cannot resume
        raise SystemExit(f"contnet train: {e}") from None
    return 0


# ----------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """The main job on digits: refined training against training at the final depth from
    the start, the manifestation table, compression, plots."""
    from . import plots

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
    dataset = _load_dataset(args)
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
        _train_config(args, n_basis=1, refine_at=refine_at, **common),
        out / "refined",
        dataset,
    )
    print(
        f"\n== 2. the same training at the final depth K = {k_final} from the start, {epochs} epochs"
    )
    direct = run_train(
        args, _train_config(args, n_basis=k_final, refine_at=(), **common), out / "direct", dataset
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
    _write_json(out / "demo.json", summary)
    print(
        f"\nplots: {out}/training_curves.png, manifestations.png, theta.png; summary: {out}/demo.json"
    )
    print(f"demo finished in {summary['total_time_s']:.0f}s")
    return 0


# ----------------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    """Run the microbenchmarks of the source tree's bench/ folder (python -m bench)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / "bench" / "__main__.py").is_file():
        raise SystemExit(
            "contnet bench: the benchmarks live in the bench/ folder of a contnet checkout; "
            "install it from source (pip install -e .) to run them"
        )
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    bench_main(args.bench_args)
    return 0


# ----------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (argparse names the option in its error)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _finite_float(text: str) -> float:
    """An argparse type: a finite float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    v = _finite_float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return v


def _checkpoint_path(text: str) -> str:
    """An argparse type: a checkpoint path (its metadata goes to the .json beside it)."""
    if pathlib.Path(text).suffix == ".json":
        raise argparse.ArgumentTypeError(
            f"must not end in .json (the checkpoint's metadata goes to PATH.json), got {text!r}"
        )
    return text


def _add_data(p, default="digits"):
    p.add_argument(
        "--data",
        choices=data_lib.DATASETS,
        default=default,
        help="digits (bundled with scikit-learn) or cifar10 (--data-dir)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder of the CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin)",
    )


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:1, ...)."""
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(f"not a device: {e}") from None
    if device.type != "cpu":
        module = getattr(torch, device.type, None)
        available = module is not None and getattr(module, "is_available", lambda: False)()
        if not available:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no {device.type} device")
        if device.index is not None and device.index >= module.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {module.device_count()} {device.type} device(s)"
            )
    return text


def _add_device(p):
    p.add_argument("--device", type=_device, default="cpu", help="cpu or cuda (default cpu)")


def _add_train_options(p, depth=True):
    """The training options; ``depth=False`` leaves out the basis, scheme, step and
    refinement options (the demo sets those itself)."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--widths",
        type=_positive_int,
        nargs="+",
        default=[16, 32, 64],
        help="channels of each stage (default 16 32 64)",
    )
    if depth:
        g.add_argument(
            "--basis",
            choices=FAMILIES,
            default="piecewise_constant",
            help="basis of the weights in depth",
        )
        g.add_argument(
            "--n-basis",
            type=_positive_int,
            default=1,
            help="basis nodes K at the start (default 1)",
        )
        g.add_argument(
            "--scheme", choices=schemes.names(), default="rk4", help="training scheme (default rk4)"
        )
        g.add_argument(
            "--n-steps",
            type=_positive_int,
            default=None,
            help="steps per block (default: K, doubled with K on refinement)",
        )
    g.add_argument("--act", choices=list(ACTIVATIONS), default="relu")
    g.add_argument("--norm", choices=["batch", "none"], default="batch")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=18)
    g.add_argument("--batch-size", type=_positive_int, default=64)
    g.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    g.add_argument(
        "--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum (default 0.9)"
    )
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument(
        "--schedule",
        choices=["cosine", "step", "constant"],
        default="cosine",
        help="learning-rate schedule",
    )
    g.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        help="training images held out for validation, per class (default 0.1); compress "
        "chooses on them",
    )
    if depth:
        g.add_argument(
            "--refine-at",
            type=int,
            nargs="*",
            default=[],
            metavar="EPOCH",
            help="epochs (0-based starts) at which K and n_steps double, e.g. --refine-at 6 12",
        )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    _add_device(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    """What eval and compress read: the checkpoint, its data and the schemes to try."""
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint written by train or compress --save"
    )
    _add_data(p, default=None)
    p.add_argument(
        "--schemes",
        nargs="+",
        default=None,
        choices=schemes.names(),
        help="schemes to try (default: the model's own, euler, midpoint, rk4)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contnet",
        description="Continuous-in-depth neural networks: train with refinement in depth, evaluate every "
        "manifestation (scheme x steps) of the same weights, compress.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a ContinuousNet, optionally refining it in depth",
        description="Train a ContinuousNet; a checkpoint is written after every epoch.",
    )
    _add_data(t)
    _add_train_options(t)
    t.add_argument(
        "--out", default="runs/train", help="output folder (checkpoint.pt, train.json, plots)"
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "eval",
        help="the manifestation table of a checkpoint",
        description="Test accuracy and output drift of one set of weights under schemes x step counts, with the empirical order of convergence of the drift.",
    )
    _add_checkpoint(e)
    e.add_argument(
        "--steps",
        type=_positive_int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32, 64],
        help="step counts to try (default 1 2 4 8 16 32 64)",
    )
    e.add_argument(
        "--reference",
        nargs=2,
        default=["rk4", "128"],
        metavar=("SCHEME", "N_STEPS"),
        help="the finest solution (default rk4 128)",
    )
    e.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    _add_device(e)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser(
        "compress",
        help="cheaper manifestations of a checkpoint within an accuracy budget",
        description="Project onto fewer basis nodes and/or use another scheme or fewer steps; report parameters, inference latency and validation accuracy of each candidate and pick the fastest within --max-drop accuracy points of the original on the validation split (training images the model did not train on); the choice's test accuracy is reported after.",
    )
    _add_checkpoint(c)
    c.add_argument(
        "--max-drop",
        type=_finite_float,
        default=1.0,
        help="validation accuracy points allowed to lose (default 1)",
    )
    c.add_argument(
        "--val-fraction",
        type=_fraction,
        default=None,
        help="the validation split candidates are chosen on: this fraction of the training "
        "images (default: the one training held out, or 0.1)",
    )
    c.add_argument(
        "--candidate-n-basis",
        type=_positive_int,
        nargs="+",
        default=None,
        help="basis sizes to try (default: halving)",
    )
    c.add_argument(
        "--steps",
        type=_positive_int,
        nargs="+",
        default=None,
        help="step counts to try (default: n_steps, /2, /4, /8)",
    )
    c.add_argument(
        "--save",
        type=_checkpoint_path,
        default=None,
        help="write the chosen model as a checkpoint here",
    )
    c.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    _add_device(c)
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser(
        "demo",
        help="the main job on digits (what `make demo` runs)",
        description="Refined training (K 1 -> 2 -> 4) against training at K = 4 from the start, the manifestation table, compression and plots, on scikit-learn's digits.",
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument(
        "--max-drop",
        type=_finite_float,
        default=1.0,
        help="accuracy points the compressed model may lose (default 1)",
    )
    d.add_argument("--quick", action="store_true", help="a short run (6 epochs) for smoke tests")
    _add_train_options(d, depth=False)  # K 1 -> 2 -> 4, rk4, piecewise constant: set by the demo
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser(
        "bench",
        help="microbenchmarks against pure-PyTorch stepping (see bench/README.md)",
        description="Run a benchmark suite: `contnet bench ops ...` or `contnet bench block ...` "
        "(arguments go to `python -m bench`; add --help after the suite name for its options).",
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="suite and its options")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
