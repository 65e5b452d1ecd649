"""The published figures: every result under bench/results that the README quotes, the
command that makes it, the README blocks generated from it, and a miniature of it that the
tests rerun.

    python bench/figures.py run [NAME ...]   rerun the commands of the published results
                                             (all by default), then their miniatures
    python bench/figures.py readme           rewrite the README's generated blocks
    python bench/figures.py check            exit 1 where a block differs from its result
    python bench/figures.py mini [NAME ...]  rerun the miniatures only

``make figures`` runs the first two. A change that moves a published figure runs it and
commits the results, the README and the miniatures together: tests/test_published.py
fails on a README block that is not what its result gives, on a result without its
provenance, and on a miniature that no longer gives its committed figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MINI = RESULTS / "mini"
README = ROOT / "README.md"
RUNS = pathlib.Path("runs") / "figures"  # under ROOT, where the commands run

#: what every published result records of where it comes from
PROVENANCE = ("command", "commit", "date", "threads", "device_name", "python", "torch", "contnet")

TRANSFORMER = [
    "train",
    "--model",
    "transformer",
    "--optimizer",
    "adamw",
    "--lr",
    "2e-3",
    "--weight-decay",
    "0.05",
    "--epochs",
    "30",
]


def _contnet(*args: str) -> None:
    print("$ contnet", " ".join(args), flush=True)
    # a benchmark writes where it is told: here, the published results
    env = {**os.environ, "CONTNET_BENCH_RESULTS": str(RESULTS)}
    subprocess.run([sys.executable, "-m", "contnet", *args], cwd=ROOT, check=True, env=env)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _write(path: pathlib.Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------- the commands


def run_demo() -> None:
    _contnet("demo", "--out", str(RUNS / "demo"))
    shutil.copy(ROOT / RUNS / "demo" / "demo.json", RESULTS / "demo-digits.json")


def run_transformer() -> None:
    _contnet(
        *TRANSFORMER, "--refine-at", "10", "20", "--overwrite", "--out", str(RUNS / "t-refined")
    )
    _contnet(*TRANSFORMER, "--n-basis", "4", "--overwrite", "--out", str(RUNS / "t-direct"))
    runs = {
        k: json.loads((ROOT / RUNS / f"t-{k}" / "train.json").read_text())
        for k in ("refined", "direct")
    }
    _write(
        RESULTS / "transformer-digits.json",
        {"provenance": runs["refined"]["provenance"], **runs},
    )


def run_study() -> None:
    _contnet("study", "--overwrite", "--out", str(RUNS / "study"))
    for ext in ("json", "md"):
        shutil.copy(ROOT / RUNS / "study" / f"study.{ext}", RESULTS / f"study-digits.{ext}")


def run_backprop() -> None:
    _contnet("bench", "backprop", "--device", "cpu")


# ------------------------------------------------------------------- the README blocks


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def block_demo() -> str:
    d = _load("demo-digits.json")
    p, r, di = d["provenance"], d["refined"], d["direct"]
    comp, half = d["compression"], d["half_steps"]
    o, c = comp["original"], comp["choice"]
    text = (
        f"On this project's {p['threads']}-thread CPU (one run, {d['total_time_s']:.0f} s in "
        f"all; `{p['command']}`, `bench/results/demo-digits.json`): refined training took "
        f"{r['wall_time_s']:.1f} s against {di['wall_time_s']:.1f} s for training at K = 4 "
        f"from the start ({d['refined_speedup']:.2f}x faster), at {_pct(r['test_acc'])} and "
        f"{_pct(di['test_acc'])} test accuracy ({comp['test_images']} test images; "
        f"{comp['validation_images']} training images held out for validation). "
    )
    if c is None or c["blocks"] == o["blocks"]:
        text += "Compression kept the model as trained: no candidate was faster within 1 point. "
    else:
        text += (
            f"Compression chose {c['scheme']} with {c['n_steps']} step(s) at K = "
            f"{c['n_basis']} on the validation split, "
            f"{o['latency_ms'] / c['latency_ms']:.1f}x faster than the trained "
            f"{o['scheme']} with {o['n_steps']} steps, and measured {_pct(c['test'])} on the "
            f"test set after choosing (the original: {_pct(o['test'])}). "
        )
    return text + (
        f"rk4 at half the steps scored {_pct(half['val'])} on validation "
        f"({half['drop_points']:+.2f} points) and ran {o['latency_ms'] / half['latency_ms']:.1f}x "
        f"faster. With {comp['validation_images']} validation images one image is "
        f"{100 / comp['validation_images']:.1f} points, so the choice among near-equal "
        "candidates is coarse."
    )


def block_transformer() -> str:
    d = _load("transformer-digits.json")
    r, di = d["refined"], d["direct"]
    return (
        f"On the digits the transformer command above reached {_pct(r['test_acc'])} test "
        f"accuracy in "
        f"{r['wall_time_s']:.1f} s of training, refined K = 1 -> 2 -> 4, against "
        f"{_pct(di['test_acc'])} in {di['wall_time_s']:.1f} s trained at K = 4 from the start "
        f"(`bench/results/transformer-digits.json`, {d['provenance']['threads']} CPU "
        "threads)."
    )


def block_study() -> str:
    from contnet.cli import study

    d = _load("study-digits.json")
    p = d["provenance"]
    return (
        f"`{p['command']}` ({len(d['seeds'])} seeds; {d['settings']} {p['threads']} CPU "
        f"threads; `bench/results/study-digits.{{json,md}}`), mean ± standard deviation over "
        f"the seeds:\n\n{study.table(d)}\n{study.findings(d)}"
    )


def block_adjoint() -> str:
    d = _load("backprop-cpu.json")
    rows = d["adjoint_error"]
    steps = rows[0]["n_steps"]
    head = "| basis | scheme | " + " | ".join(map(str, steps)) + " | slope |"
    lines = [head, "| --- " * (len(steps) + 3) + "|"]
    for r in rows:
        errs = " | ".join(f"{e:.1e}" for e in r["rel_error"])
        lines.append(f"| {r['basis']} K={r['K']} | {r['scheme']} | {errs} | {r['slope']:.2f} |")
    return "\n".join(lines)


def block_memory() -> str:
    m = _load("backprop-cpu.json")["memory"]
    mib = 2**20
    steps = m["rows"][0]["n_steps"]
    lines = ["| n_steps | " + " | ".join(map(str, steps)) + " |", "| --- " * (len(steps) + 1) + "|"]
    for r in m["rows"]:
        lines.append(
            f"| {r['mode']} (MiB) | " + " | ".join(f"{b / mib:.2f}" for b in r["bytes"]) + " |"
        )
    by = {r["mode"]: r["bytes"] for r in m["rows"]}

    def growth(mode):  # per step, over the last doubling
        return (by[mode][-1] - by[mode][-2]) / (steps[-1] - steps[-2]) / mib

    return "\n".join(lines) + (
        f"\n\n`checkpoint` grows by {growth('checkpoint'):.3f} MiB per step (one state is "
        f"{m['state_bytes'] / mib:.3f} MiB), `direct` by {growth('direct'):.2f} MiB; `adjoint` "
        f"by {growth('adjoint'):.2f} MiB."
    )


BLOCKS = {
    "demo": block_demo,
    "transformer": block_transformer,
    "study": block_study,
    "adjoint": block_adjoint,
    "memory": block_memory,
}
RUNNERS = {
    "demo": run_demo,
    "transformer": run_transformer,
    "study": run_study,
    "backprop": run_backprop,
}
#: the result file(s) each runner writes
FILES = {
    "demo": ["demo-digits.json"],
    "transformer": ["transformer-digits.json"],
    "study": ["study-digits.json"],
    "backprop": ["backprop-cpu.json"],
}

_BLOCK = re.compile(
    r"(<!-- figures: (?P<name>[a-z]+) -->\n)(?P<body>.*?)(\n<!-- /figures: (?P=name) -->)", re.S
)


def readme_blocks(text: str) -> dict:
    """``{name: body}`` of the README's generated blocks."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def render_readme(text: str) -> str:
    return _BLOCK.sub(lambda m: m[1] + BLOCKS[m["name"]]() + m[4], text)


# ----------------------------------------------------------------------- the miniatures


@contextlib.contextmanager
def _threads(n: int = 2):
    """Two threads, as the published runs (a reduction's order follows the threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cli(*args: str) -> None:
    from contnet import cli

    if cli.main(list(args)) != 0:
        raise RuntimeError(f"contnet {' '.join(args)} failed")


def mini_demo(tmp: pathlib.Path) -> dict:
    _cli("demo", "--quick", "--widths", "4", "4", "4", "--out", str(tmp / "demo"))
    d = json.loads((tmp / "demo" / "demo.json").read_text())
    rows = d["manifestations"]["rows"]
    return {
        "refined_test_acc": d["refined"]["test_acc"],
        "direct_test_acc": d["direct"]["test_acc"],
        "manifestation_accuracy": {s: r["accuracy"] for s, r in rows.items()},
        "manifestation_drift": {s: r["drift"] for s, r in rows.items()},
        "candidates_val": [[c["blocks"], c["val"]] for c in d["compression"]["candidates"]],
    }


def mini_transformer(tmp: pathlib.Path) -> dict:
    out = tmp / "t"
    _cli(
        "train", "--model", "transformer", "--dim", "16", "--heads", "2", "--epochs", "3",
        "--refine-at", "1", "2", "--no-progress", "--out", str(out),
    )  # fmt: skip
    d = json.loads((out / "train.json").read_text())
    return {
        "history": [[h["n_basis"], h["train_loss"], h["test_acc"]] for h in d["history"]],
    }


def mini_study(tmp: pathlib.Path) -> dict:
    out = tmp / "study"
    _cli(
        "study", "--seeds", "0", "--epochs", "2", "--n-basis", "2", "--widths", "4", "4", "4",
        "--out", str(out),
    )  # fmt: skip
    d = json.loads((out / "study.json").read_text())
    return {
        "per_seed": [
            {row: {k: v for k, v in r.items() if k != "wall_time_s"} for row, r in s.items()}
            for s in d["per_seed"]
        ],
    }


def mini_backprop(tmp: pathlib.Path) -> dict:
    from contnet.bench import backprop_bench

    errors = backprop_bench.gradient_error("cpu", steps=(4, 8))
    mem = backprop_bench.memory("cpu", steps=(1, 2), channels=4, pixels=8, batch=2)
    return {"adjoint_error": errors, "memory": mem["rows"]}


def mini_corruptions(tmp: pathlib.Path) -> dict:
    """The corrupted images of this version: sums, sums of squares and the first image's
    pixels of every corruption and severity, on fixed images."""
    import torch

    from contnet.evaluation import CORRUPTION_VERSION, CORRUPTIONS, SEVERITIES, corrupt

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64)
    out = {"version": CORRUPTION_VERSION}
    for name in CORRUPTIONS:
        for s in SEVERITIES:
            y = corrupt(x, name, s, seed=3)
            out[f"{name}/{s}"] = [y.sum().item(), y.square().sum().item(), y[0].flatten().tolist()]
    return out


MINIATURES = {
    "demo": mini_demo,
    "transformer": mini_transformer,
    "study": mini_study,
    "backprop": mini_backprop,
    "corruptions": mini_corruptions,
}


def run_miniature(name: str, tmp: pathlib.Path) -> dict:
    """Miniature ``name``'s figures, as JSON would hold them (a round trip through it)."""
    with _threads():
        figures = MINIATURES[name](tmp)
    return json.loads(json.dumps(figures, allow_nan=False))


def write_miniature(name: str) -> None:
    from contnet.provenance import provenance

    with tempfile.TemporaryDirectory() as tmp:
        figures = run_miniature(name, pathlib.Path(tmp))
    _write(MINI / f"{name}.json", {"provenance": provenance("cpu"), "figures": figures})
    print(f"wrote {MINI / f'{name}.json'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("action", choices=["run", "readme", "check", "mini"])
    p.add_argument("names", nargs="*")
    a = p.parse_args(argv)
    if a.action == "run":
        for name in a.names or list(RUNNERS):
            RUNNERS[name]()
        for name in a.names or list(MINIATURES):
            if name in MINIATURES:
                write_miniature(name)
        return 0
    if a.action == "mini":
        for name in a.names or list(MINIATURES):
            write_miniature(name)
        return 0
    text = README.read_text()
    new = render_readme(text)
    if a.action == "readme":
        README.write_text(new)
        print(f"wrote {README}")
        return 0
    stale = [n for n, body in readme_blocks(new).items() if readme_blocks(text).get(n) != body]
    if stale:
        print(f"README blocks out of date: {stale}; run python bench/figures.py readme")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
