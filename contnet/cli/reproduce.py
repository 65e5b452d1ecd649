"""``contnet reproduce --preset NAME --data-dir PATH``: every arm of a paper's table trained
with the paper's settings, then the manifestation table and the projection rows, in one
report with the paper's figures beside ours (``report.md``, ``report.json``, plots)."""

from __future__ import annotations

import copy
import pathlib

from ..evaluation import manifestation_table, metric_on, plots
from ..models import project
from ..report import write_json
from ..training import TrainConfig, presets, train
from ..training.loop import count_parameters
from .commands import load_dataset
from .options import add_run_flags
from .tables import manifestation_tables


def _arm_config(preset, arm, args) -> TrainConfig:
    settings = {**preset.settings, **arm.settings}
    if args.epochs is not None:
        settings = presets.scaled(settings, args.epochs)
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    settings.update(seed=args.seed, device=args.device, progress=args.progress)
    settings.update(data_dir=args.data_dir, extra={"preset": preset.name, "arm": arm.name})
    return TrainConfig(**settings)


def _train_arms(preset, args, dataset, out, log) -> dict:
    results = {}
    for arm in preset.arms:
        cfg = _arm_config(preset, arm, args)
        log(f"\n== {preset.name} / {arm.name}: {arm.paper}")
        run = train(
            cfg, out / arm.name, dataset, resume=args.resume, overwrite=args.overwrite, log=log
        )
        results[arm.name] = {
            "model": run["model"],
            "history": run["history"],
            "test_acc": run["test_acc"],
            "wall_time_s": run["wall_time_s"],
            "parameters": count_parameters(run["model"]),
            "config": cfg.to_json(),
        }
    return results


def _projections(preset, runs, dataset, device) -> list[dict]:
    """Each projection row: the arm's trained model projected onto fewer nodes without
    retraining, run with the row's step count."""
    rows = []
    for p in preset.projections:
        model = copy.deepcopy(runs[p.arm]["model"])
        project(model, p.n_basis)
        model.set_manifestation(n_steps=p.n_steps)
        acc = metric_on(model, (dataset.x_test, dataset.y_test), device=device)
        rows.append(
            {
                "arm": p.arm,
                "n_basis": p.n_basis,
                "n_steps": p.n_steps,
                "paper": p.paper,
                "paper_accuracy": p.accuracy,
                "accuracy": acc,
            }
        )
    return rows


def _report(preset, runs, proj, tables, epochs) -> str:
    """The markdown report: the paper's figures beside ours."""
    arm_rows = []
    for arm in preset.arms:
        r = runs[arm.name]
        arm_rows.append(
            [
                arm.name,
                arm.paper,
                "-" if arm.accuracy is None else f"{arm.accuracy:g}",
                f"{100 * r['test_acc']:.2f}",
                "-" if arm.minutes is None else f"{arm.minutes:g}",
                f"{r['wall_time_s'] / 60:.1f}",
                f"{r['parameters']:,}",
            ]
        )
    head = ["arm", "paper's model", "paper %", "ours %", "paper min", "ours min", "parameters"]
    lines = [
        f"# {preset.name}: {preset.summary}",
        "",
        f"Source: {preset.source}. Epochs: {epochs} (the paper's: {preset.settings['epochs']}).",
        "Minutes are wall time on each machine: compare the ratios between arms.",
        "",
        "## Arms",
        "",
        _markdown(head, arm_rows),
    ]
    if proj:
        rows = [
            [
                p["arm"],
                p["paper"],
                "-" if p["paper_accuracy"] is None else f"{p['paper_accuracy']:g}",
                f"{100 * p['accuracy']:.2f}",
            ]
            for p in proj
        ]
        lines += [
            "",
            "## Projection without retraining",
            "",
            _markdown(["arm", "row", "paper %", "ours %"], rows),
        ]
    for name, table in tables.items():
        lines += ["", f"## Manifestations of {name}", "", "```", manifestation_tables(table), "```"]
    return "\n".join(lines) + "\n"


def _markdown(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)


def cmd_reproduce(args, log=print) -> int:
    preset = presets.get(args.preset)
    args.data = preset.settings["data"]
    dataset = load_dataset(args)
    out = pathlib.Path(args.out or f"runs/reproduce-{preset.name}")
    runs = _train_arms(preset, args, dataset, out, log)
    tables = {}
    for arm in preset.arms:
        model = runs[arm.name]["model"]
        K = max(1, runs[arm.name]["history"][-1]["n_basis"])
        steps = args.steps or sorted({max(1, K // 2), K, 2 * K})
        reference = (
            (args.reference[0], int(args.reference[1])) if args.reference else ("rk4", 4 * K)
        )
        tables[arm.name] = manifestation_table(
            model,
            dataset.x_test,
            dataset.y_test,
            ["euler", "midpoint", "rk4"],
            steps,
            reference,
            device=args.device,
        )
    proj = _projections(preset, runs, dataset, args.device)
    epochs = runs[preset.arms[0].name]["config"]["epochs"]
    report = _report(preset, runs, proj, tables, epochs)
    (out / "report.md").write_text(report)
    summary = {
        "preset": preset.name,
        "source": preset.source,
        "epochs": epochs,
        "arms": {
            arm.name: {
                "paper": arm.paper,
                "paper_accuracy": arm.accuracy,
                "paper_minutes": arm.minutes,
                **{k: v for k, v in runs[arm.name].items() if k != "model"},
            }
            for arm in preset.arms
        },
        "projections": proj,
        "manifestations": tables,
    }
    write_json(out / "report.json", summary)
    plots.training_curves({n: r["history"] for n, r in runs.items()}, out / "training_curves.png")
    for name, table in tables.items():
        plots.manifestation_heatmap(table, out / f"manifestations-{name}.png")
    log("\n" + report)
    log(f"-> {out}/report.md, report.json, training_curves.png, manifestations-*.png")
    return 0


def add_reproduce(sub, add_device) -> None:
    r = sub.add_parser(
        "reproduce",
        help="a paper's table: every arm trained with its settings, one report",
        description="Train every arm of a preset (the paper's settings), then evaluate "
        "their manifestations and the projection rows, and write report.md/report.json "
        "with the paper's figures beside ours. Presets: "
        + "; ".join(p.help_line() for p in presets.PRESETS.values()).replace("%", "%%"),
    )
    r.add_argument("--preset", required=True, choices=list(presets.PRESETS))
    add_run_flags(r)
    r.add_argument("--data-dir", required=True, help="folder of the data set's binary files")
    r.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="a smaller budget: the schedule's and refinements' epochs scale with it",
    )
    r.add_argument("--batch-size", type=int, default=None, help="default: the paper's")
    r.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        help="step counts of the manifestation tables (default: K/2, K, 2K of each arm)",
    )
    r.add_argument(
        "--reference",
        nargs=2,
        default=None,
        metavar=("SCHEME", "N_STEPS"),
        help="the manifestation tables' finest solution (default: rk4 with 4K steps)",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.add_argument("--out", default=None, help="default: runs/reproduce-PRESET")
    add_device(r)
    r.set_defaults(func=cmd_reproduce)
