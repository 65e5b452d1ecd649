"""The tables the commands print."""

from __future__ import annotations

from ..report import format_table


def history_table(history) -> str:
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


def manifestation_tables(table) -> str:
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


def steps_or_tolerance(c) -> str:
    """A compression candidate's steps: its step count, or its tolerance."""
    return f"n_steps={c['n_steps']}" if c.get("rtol") is None else f"rtol={c['rtol']}"


def compress_table(result) -> str:
    def row(c, mark):
        return [
            c["n_basis"],
            c["scheme"],
            c["n_steps"] if c.get("rtol") is None else "",
            "" if c.get("rtol") is None else c["rtol"],
            f"{c['parameters']:,}",
            f"{100 * c['val']:.2f}",
            "" if c is result["original"] else f"{c['drop_points']:+.2f}",
            f"{c['latency_ms']:.2f}",
            mark,
        ]

    rows = []
    for c in result["candidates"]:
        marks = ["original"] if c is result["original"] else []
        if c is result["choice"]:
            marks.append("<- choice")
        elif "failed" in c:
            marks.append("failed")
        elif c["drop_points"] > (result["max_drop_points"] or float("inf")):
            marks.append("too lossy")
        rows.append(row(c, ", ".join(marks)))
    header = ["K", "scheme", "n_steps", "rtol", "params", f"val {result['metric']} %", "drop pts"]
    return format_table(rows, header + [f"ms/{result['latency_batch']}", ""])


def corruption_tables(table) -> str:
    """Accuracy (%) per corruption and severity, each corruption's mean, and the summary."""
    sev = table["severities"]
    rows = [
        [name] + [f"{100 * a:.2f}" for a in accs] + [f"{100 * sum(accs) / len(accs):.2f}"]
        for name, accs in table["accuracy"].items()
    ]
    head = ["corruption"] + [f"s{s}" for s in sev] + ["mean"]
    return (
        f"accuracy (%) on corrupted test images (seed {table['seed']})\n"
        + format_table(rows, head)
        + f"\nclean {100 * table['clean']:.2f}%  mean corruption accuracy "
        f"{100 * table['mean_corruption_accuracy']:.2f}%"
    )


def adaptive_rows(adaptive) -> str:
    """The adaptive rows of ``contnet eval``: per rtol and mode, accuracy, drift, rate
    evaluations per input (mean, max) and wall time."""
    has_acc = "accuracy" in adaptive["rows"][0]
    rows = [
        [f"{r['rtol']:.0e}", r["mode"]]
        + ([f"{100 * r['accuracy']:.2f}"] if has_acc else [])
        + [
            f"{r['drift']:.1e}",
            f"{r['evaluations_mean']:.1f}",
            r["evaluations_max"],
            f"{r['wall_s']:.2f}",
        ]  # fmt: skip
        for r in adaptive["rows"]
    ]
    head = ["rtol", "mode"] + (["accuracy (%)"] if has_acc else [])
    head += ["drift", "evals/input", "max", "wall (s)"]
    return f"{adaptive['scheme']} to a tolerance (atol = rtol / 100)\n" + format_table(rows, head)
