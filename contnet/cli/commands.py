"""The commands ``train``, ``eval``, ``compress`` and ``bench``: each runs the job's
library and reports (tables on the terminal, JSON and plots in its output folder)."""

from __future__ import annotations

import os
import pathlib

from .. import ops, schemes
from ..evaluation import (
    RTOLS,
    adaptive_table,
    apply_manifestation,
    compress,
    corruption_table,
    fixed_evaluations,
    manifestation_table,
    metric_on,
    plots,
    schemes_to_try,
)
from ..provenance import provenance
from ..report import check_writable, write_json
from ..training import (
    CheckpointError,
    OutputError,
    check_finite,
    load_checkpoint,
    model_from_checkpoint,
    rundir,
    save_checkpoint,
    train,
)
from ..training import data as data_lib
from ..training.checkpoint_file import summary_path
from .options import config_from
from .tables import (
    adaptive_rows,
    compress_table,
    corruption_tables,
    history_table,
    manifestation_tables,
    steps_or_tolerance,
)


def _who(args) -> str:
    """``contnet COMMAND``, for a message."""
    command = getattr(args, "command", None)
    return f"contnet {command}" if command else "contnet"


def load_dataset(args):
    try:
        return data_lib.load(args.data, args.data_dir, seed=0)
    except (OSError, ValueError, ImportError) as e:
        raise SystemExit(f"{_who(args)}: cannot load data: {e}") from None


def run_train(args, cfg=None, out=None, dataset=None, log=print) -> dict:

    cfg = cfg or config_from(args)
    out = pathlib.Path(out or args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        check_writable(out, "--out", files=rundir.RUN_FILES)  # before the data are read
    dataset = dataset or load_dataset(args)
    try:
        held = dataset.with_validation(cfg.val_fraction).describe()
    except ValueError as e:
        raise SystemExit(f"contnet train: --val-fraction: {e}") from None
    if int(os.environ.get("RANK", "0")) == 0:
        log(f"training on {held}; kernels: {ops.backend()}; output: {out}")
    result = train(
        cfg,
        out,
        dataset,
        resume=getattr(args, "resume", False),
        overwrite=getattr(args, "overwrite", False),
        log=log,
    )
    hist = result["history"]
    summary = {
        "provenance": provenance(cfg.device),
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
    log("\n" + history_table(hist))
    write_json(out / "train.json", summary)
    plots.training_curves({"run": hist}, out / "training_curves.png")
    plots.theta_over_depth(result["model"], out / "theta.png")
    log(
        f"test accuracy {100 * result['test_acc']:.2f}%  wall time {result['wall_time_s']:.1f}s  -> {out}/train.json, training_curves.png, theta.png"
    )
    return {**summary, "model": result["model"]}


def cmd_train(args) -> int:

    try:
        run_train(args)
    except (CheckpointError, ValueError) as e:  # a --resume that cannot resume; a model
        raise SystemExit(f"contnet train: {e}") from None  # that its options cannot build
    return 0


def run_eval(
    model,
    dataset,
    out: pathlib.Path,
    schemes_,
    steps,
    reference,
    log=print,
    device="cpu",
    rtols=RTOLS,
    adaptive_scheme="dopri5",
) -> dict:
    """The manifestation table and, for every rtol, the adaptive rows (batch-shared and
    per input) with the accuracy against rate evaluations plotted beside the fixed steps'."""
    table = manifestation_table(
        model, dataset.x_test, dataset.y_test, schemes_, steps, reference, device=device
    )
    log(manifestation_tables(table))
    written = ["eval.json", "manifestations.png"]
    if rtols:
        adaptive = adaptive_table(model, dataset.x_test, dataset.y_test, rtols, adaptive_scheme,
                                  reference, device=device)  # fmt: skip
        table["adaptive"] = adaptive
        log("\n" + adaptive_rows(adaptive))
        cost = {s: {n: fixed_evaluations(model, s, n) for n in steps} for s in table["rows"]}
        table["fixed_evaluations"] = {schemes.name_of(s): c for s, c in cost.items()}
        plots.accuracy_vs_evaluations(table, adaptive, cost, out / "accuracy_evaluations.png")
        written.append("accuracy_evaluations.png")
    write_json(out / "eval.json", table)
    plots.manifestation_heatmap(table, out / "manifestations.png")
    log(f"-> {out}/{', '.join(written)}")
    return table


def model_from(args):

    try:
        payload = load_checkpoint(args.checkpoint)
        check_finite(payload)
        model = model_from_checkpoint(
            payload, n_basis=getattr(args, "n_basis", None), device=args.device
        )
    except CheckpointError as e:
        raise SystemExit(f"{_who(args)}: {e}") from None
    train_cfg = payload["meta"].get("train") or {}
    if args.data is None:
        args.data = train_cfg.get("data", "digits")
        args.data_dir = args.data_dir or train_cfg.get("data_dir")
    return model, payload


def reference_pair(pair) -> tuple[str, int]:
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

    reference = reference_pair(args.reference)
    folder = args.out or pathlib.Path(args.checkpoint).parent
    out = check_writable(folder, "--out", files=rundir.EVAL_FILES)
    rundir.leftovers(out, log=print)
    model, _ = model_from(args)
    dataset = load_dataset(args)
    try:
        run_eval(
            model,
            dataset,
            out,
            args.schemes or schemes_to_try(model),
            args.steps,
            reference,
            device=args.device,
            rtols=list(dict.fromkeys(args.rtols)),  # each once, in the order given
            adaptive_scheme=args.adaptive_scheme,
        )
    except ValueError as e:  # a scheme the model cannot take (lm without its learned k)
        raise SystemExit(f"contnet eval: {e}") from None
    if args.corruptions:
        run_corruptions(model, dataset, out, args.corruption_seed, device=args.device)
    return 0


def corruption_scores(model, dataset, seed: int, device="cpu") -> dict:
    """:func:`contnet.evaluation.corruption_table` of ``model`` on ``dataset``'s test images
    (corrupted as pixels, standardised as the model was trained)."""

    def evaluate(pixels, y):
        return metric_on(model, (dataset.from_pixels(pixels), y), device=device)

    pixels = dataset.to_pixels(dataset.x_test)
    return corruption_table(evaluate, pixels, dataset.y_test, seed=seed)


def run_corruptions(model, dataset, out: pathlib.Path, seed: int, log=print, device="cpu"):
    """Accuracy of ``model`` (as its blocks stand) on the test images under every
    corruption and severity: printed, ``corruptions.json`` and ``corruptions.png``."""

    table = corruption_scores(model, dataset, seed, device)
    log(corruption_tables(table))
    write_json(out / "corruptions.json", table)
    plots.corruption_heatmap(table, out / "corruptions.png")
    log(f"-> {out}/corruptions.json, corruptions.png")
    return table


def split_for_compression(dataset, train_cfg: dict, val_fraction, log=print):
    """``(val, test)`` pairs for :func:`contnet.compression.compress`: the validation split
    that training held out (``val_fraction``, default the checkpoint's), and the test set."""
    trained = train_cfg.get("val_fraction", 0.0)
    if val_fraction == 0:
        raise SystemExit(
            "contnet compress: --val-fraction 0 leaves nothing to choose on: compress chooses "
            f"on a validation split (the model held out {trained:.0%} of the training images)"
        )
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
    max_rel_drop=None,
    rtols=None,
    adaptive_scheme="dopri5",
) -> dict:

    val, test = split_for_compression(dataset, train_cfg or {}, val_fraction, log)
    log(f"candidates (chosen on {len(val[0])} validation images, not the test set):")
    result = compress(
        model,
        val,
        test=test,
        max_drop=max_drop,
        max_rel_drop=max_rel_drop,
        n_basis=n_basis,
        schemes=schemes_,
        steps=steps,
        rtols=rtols,
        adaptive_scheme=adaptive_scheme,
        log=log,
        device=device,
    )
    result["validation_images"], result["test_images"] = len(val[0]), len(test[0])
    log("\n" + compress_table(result))
    c, o = result["choice"], result["original"]
    if c is o:
        log(f"no candidate within {max_drop} point(s) on validation is faster: the original stays")
    elif c:
        ratio = o["latency_ms"] / c["latency_ms"]
        speed = (
            f"{ratio:.2f}x faster"
            if ratio >= 1.05
            else "as fast within the timing noise (5%): chosen for its fewer parameters"
        )
        log(
            f"fastest within {max_drop} point(s) on validation: K={c['n_basis']} {c['scheme']} "
            f"{steps_or_tolerance(c)}: {c['latency_ms']:.2f} ms vs {o['latency_ms']:.2f} ms "
            f"({speed}), validation accuracy {100 * c['val']:.2f}% "
            f"({c['drop_points']:+.2f} points)"
        )
        log(
            f"test accuracy of the choice {100 * c['test']:.2f}% (original {100 * o['test']:.2f}%; "
            "measured after choosing)"
        )
    else:
        log(f"no candidate within {max_drop} point(s) of the original validation accuracy")
    write_json(out / "compress.json", result)
    log(f"-> {out}/compress.json")
    return result


def cmd_compress(args) -> int:
    folder = args.out or pathlib.Path(args.checkpoint).parent
    out = check_writable(folder, "--out", files=["compress.json"])
    rundir.leftovers(out, log=print)
    if args.save:
        _check_save(args.save, args.checkpoint, args.overwrite)
    model, payload = model_from(args)
    dataset = load_dataset(args)
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
            max_rel_drop=args.max_rel_drop,
            rtols=args.rtols,
            adaptive_scheme=args.adaptive_scheme,
        )
    except ValueError as e:  # a scheme the model cannot take (lm without its learned k)
        raise SystemExit(f"contnet compress: {e}") from None
    if args.save and result["choice"]:
        apply_manifestation(model, result["choice"])
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


def _check_save(save, checkpoint, overwrite: bool) -> None:
    """Before any work: ``compress --save`` writes a new checkpoint file: never over the one
    it compresses (a training checkpoint, with its optimizer, RNG states and history), nor
    over another file unless ``--overwrite``, nor into a folder a run is writing, nor where
    it or its ``.json`` summary is a folder or has the name of a report the commands write
    (``compress.json``, ``eval.json``, ...)."""
    save, src = pathlib.Path(save), pathlib.Path(checkpoint)
    if save.resolve() == src.resolve() or (save.exists() and src.exists() and save.samefile(src)):
        raise OutputError(
            f"--save {save} is the checkpoint being compressed: it would replace the training "
            "checkpoint (its optimizer, RNG states and history); save to another file"
        )
    reports = {f for f in (*rundir.RUN_FILES, "demo.json") if f.endswith(".json")}
    clash = {save.name, summary_path(save).name} & (reports - {"checkpoint.json"})
    if clash:  # compress's own report, or one eval, train or the demo write beside it
        raise OutputError(
            f"--save {save}: it or its summary would be {clash.pop()}, the name of a report "
            "contnet's commands write in a run's folder (compress's own among them); save to "
            "another name"
        )
    if summary_path(save).resolve() == summary_path(src).resolve():
        raise OutputError(
            f"--save {save}: its summary {summary_path(save)} is that of the checkpoint being "
            "compressed; save to another name"
        )
    for p in (save, summary_path(save)):
        if p.is_dir():
            raise OutputError(f"--save {save}: {p} is a folder")
        if p.exists() and not overwrite:
            raise OutputError(
                f"--save {save}: {p} exists: pass --overwrite to replace it, or save to another "
                "file"
            )
    check_writable(save.parent, "--save's folder")
    holder = rundir.held_by(save.parent)
    if holder:
        raise OutputError(f"--save {save}: its folder is being written by a run ({holder})")


def cmd_bench(args) -> int:
    """Run the microbenchmarks (:mod:`contnet.bench`)."""
    from ..bench.__main__ import main as bench_main  # imported here: it loads the profiler

    bench_main(args.bench_args)
    return 0
