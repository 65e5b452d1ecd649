"""``contnet study``: the papers' claims measured on corrupted digits, over several seeds.

(a) ContinuousNet (rk4) against the ResNet-equivalent (euler, ``K = n_steps``, piecewise
constant) and LM-ResNet, at equal parameters (LM-ResNet adds ``K`` coefficients a block);
(b) refined in depth (``K`` 1 -> ... -> K) against trained at the final depth: accuracy
and training wall time; (c) the trained rk4 model projected to half the basis nodes and/or
run with half the steps, without retraining. Each model is scored on the clean test
images and by its mean accuracy over 8 corruptions x 5 severities
(:mod:`contnet.evaluation.corruptions`). Reported: every seed, and the mean and standard
deviation over seeds (``study.json``, ``study.md``).
"""

from __future__ import annotations

import copy
import math
import pathlib

from ..evaluation import CORRUPTION_VERSION
from ..models import project
from ..provenance import provenance
from ..report import write_json
from ..training import TrainConfig, train
from .commands import corruption_scores, load_dataset
from .options import add_run_flags


def _arms(K: int, epochs: int) -> dict:
    """The models compared, by name: their settings over the study's."""
    doublings = max(0, round(math.log2(K)))  # K 1 -> 2 -> ... -> K over 2/3 of the epochs
    marks = sorted(
        {max(1, round((i + 1) * 2 * epochs / (3 * doublings))) for i in range(doublings)}
    )
    return {
        "rk4": {"scheme": "rk4", "n_basis": K},
        "resnet": {"scheme": "euler", "n_basis": K},
        "lm-resnet": {"scheme": "lm", "n_basis": K},
        "rk4-refined": {"scheme": "rk4", "n_basis": 1, "refine_at": tuple(marks)},
    }


def _scores(model, dataset, seed: int, device) -> dict:
    table = corruption_scores(model, dataset, seed, device)
    return {"clean": table["clean"], "mca": table["mean_corruption_accuracy"]}


def _projections(model, K: int, dataset, seed: int, device) -> dict:
    """The trained model with half the nodes, half the steps, and both."""
    rows = {}
    for name, (n_basis, n_steps) in {
        "half nodes": (K // 2, K),
        "half steps": (K, K // 2),
        "half both": (K // 2, K // 2),
    }.items():
        m = copy.deepcopy(model)
        if n_basis != K:
            project(m, n_basis)
        m.set_manifestation(n_steps=n_steps)
        rows[name] = _scores(m, dataset, seed, device)
    return rows


def _mean_sd(values) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def _summary(per_seed: list[dict]) -> dict:
    """``{row: {metric: [mean, sd]}}`` over the seeds."""
    out = {}
    for row in per_seed[0]:
        out[row] = {m: list(_mean_sd([s[row][m] for s in per_seed])) for m in per_seed[0][row]}
    return out


#: the rows of the published table, in order, and their names there
LABELS = {
    "rk4": "rk4",
    "resnet": "ResNet-equivalent (euler)",
    "lm-resnet": "LM-ResNet",
    "rk4-refined": "rk4 refined K {path}",
    "rk4 half nodes": "rk4, half the nodes (no retraining)",
    "rk4 half steps": "rk4, half the steps",
    "rk4 half both": "rk4, half the nodes and steps",
}


def _cell(row: dict, metric: str, scale: float = 100.0, fmt: str = ".2f") -> str:
    if metric not in row:
        return ""
    mean, sd = row[metric]
    return f"{scale * mean:{fmt}} ± {scale * sd:{fmt}}"


def _paired(per_seed, a: str, b: str, metric: str) -> tuple[float, float]:
    """Mean and standard deviation over seeds of ``a - b`` (points, or a ratio of times)."""
    if metric == "wall_time_s":
        return _mean_sd([s[b][metric] / s[a][metric] for s in per_seed])
    return _mean_sd([100 * (s[a][metric] - s[b][metric]) for s in per_seed])


def _shown(mean: float, sd: float, n: int) -> bool:
    """A paired difference counts as shown where it is more than twice its standard
    error from 0 (and there are at least 3 seeds)."""
    return n >= 3 and abs(mean) > 2 * sd / math.sqrt(n)


def findings(payload: dict) -> str:
    """The claims the table bears on, as paired differences over the seeds (mean ± sd of
    the per-seed differences, in points; a ratio of training times)."""
    per_seed, n = payload["per_seed"], len(payload["per_seed"])

    def diff(a, b, metric="mca"):
        return _paired(per_seed, a, b, metric)

    def pm(v):
        return f"{v[0]:+.2f} ± {v[1]:.2f}"

    refined = diff("rk4-refined", "rk4", "clean"), diff("rk4-refined", "rk4")
    speed = diff("rk4-refined", "rk4", "wall_time_s")
    nodes = diff("rk4 half nodes", "rk4", "clean"), diff("rk4 half nodes", "rk4")
    steps = diff("rk4 half steps", "rk4", "clean"), diff("rk4 half steps", "rk4")
    resnet, lm = diff("rk4", "resnet"), diff("rk4", "lm-resnet")
    robust = _shown(*resnet, n) and resnet[0] > 0
    return (
        f"Paired differences over the {n} seeds (mean ± sd of the per-seed differences, "
        f"points): refinement against training at the final depth {pm(refined[0])} clean, "
        f"{pm(refined[1])} corrupted, trained {speed[0]:.2f}x faster; projecting to half "
        f"the nodes {pm(nodes[0])} clean and {pm(nodes[1])} corrupted (the papers: -0.7 to "
        f"-1.7 clean); half the steps {pm(steps[0])} and {pm(steps[1])}. rk4 against the "
        f"ResNet-equivalent {pm(resnet)} corrupted, against LM-ResNet {pm(lm)}: the claim "
        "that continuous models are more robust to distribution shift is "
        + ("shown here (more than twice the standard error)." if robust else "not shown here.")
    )


def table(payload: dict) -> str:
    """The published table: every row's mean ± standard deviation over the seeds."""
    summary = payload["summary"]
    path = " -> ".join(str(2**i) for i in range(round(math.log2(payload["n_basis"])) + 1))
    head = "| model | clean % | mean corrupted % | training s |\n| --- | --- | --- | --- |"
    rows = [
        f"| {LABELS[name].format(path=path)} | {_cell(r, 'clean')} | "
        f"{_cell(r, 'mca')} | {_cell(r, 'wall_time_s', 1.0, '.1f')} |"
        for name, r in sorted(summary.items(), key=lambda kv: list(LABELS).index(kv[0]))
    ]
    return head + "\n" + "\n".join(rows) + "\n"


def markdown(payload: dict) -> str:
    """``study.md``: the settings, the table, the findings and where they come from."""
    prov = payload["provenance"]
    return (
        f"# Claims on corrupted digits ({len(payload['seeds'])} seeds: "
        f"{', '.join(map(str, payload['seeds']))})\n\n{payload['settings']}\n\n"
        f"Mean ± standard deviation over seeds.\n\n{table(payload)}\n{findings(payload)}\n\n"
        f"`{prov['command']}` at {prov['commit']}, torch {prov['torch']}, "
        f"{prov['threads']} threads ({prov['device_name']}), corrupted images version "
        f"{payload['corruption_version']}.\n"
    )


def cmd_study(args, log=print) -> int:
    args.data, args.data_dir = "digits", None
    dataset = load_dataset(args)
    out = pathlib.Path(args.out)
    K, epochs = args.n_basis, args.epochs
    per_seed = []
    for seed in args.seeds:
        rows = {}
        for name, arm in _arms(K, epochs).items():
            cfg = TrainConfig(
                widths=tuple(args.widths),
                epochs=epochs,
                seed=seed,
                device=args.device,
                progress=False,
                **arm,
            )
            run = train(
                cfg,
                out / f"seed{seed}" / name,
                dataset,
                resume=args.resume,
                overwrite=args.overwrite,
                log=lambda *a: None,
            )
            rows[name] = {
                **_scores(run["model"], dataset, seed, args.device),
                "wall_time_s": run["wall_time_s"],
            }
            log(
                f"seed {seed} {name}: clean {100 * rows[name]['clean']:.2f}%  "
                f"corrupted {100 * rows[name]['mca']:.2f}%  {run['wall_time_s']:.1f}s"
            )
            if name == "rk4":
                for p, scores in _projections(run["model"], K, dataset, seed, args.device).items():
                    rows[f"rk4 {p}"] = scores
        per_seed.append(rows)
    summary = _summary(per_seed)
    refine_at = list(_arms(K, epochs)["rk4-refined"]["refine_at"])
    payload = {
        "provenance": provenance(args.device),
        "corruption_version": CORRUPTION_VERSION,
        "settings": (
            f"ContinuousNet widths {'/'.join(map(str, args.widths))}, K = n_steps = {K} "
            f"(piecewise constant), {epochs} epochs, SGD, cosine schedule; refined: "
            f"K 1 -> {K} at epochs {refine_at}."
        ),
        "seeds": list(args.seeds),
        "n_basis": K,
        "epochs": epochs,
        "widths": list(args.widths),
        "per_seed": per_seed,
        "summary": summary,
    }
    write_json(out / "study.json", payload)
    report = markdown(payload)
    (out / "study.md").write_text(report)
    log("\n" + report + f"\n-> {out}/study.json, study.md")
    return 0


def add_study(sub, add_device) -> None:
    s = sub.add_parser(
        "study",
        help="the papers' claims on corrupted digits, over several seeds",
        description=__doc__,
    )
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--epochs", type=int, default=18)
    s.add_argument("--n-basis", type=int, default=4, help="the final depth K (a power of 2)")
    s.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    s.add_argument("--out", default="runs/study")
    add_run_flags(s)
    add_device(s)
    s.set_defaults(func=cmd_study)
