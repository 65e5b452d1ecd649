"""The command line's parser: ``contnet <command> [options]``."""

from __future__ import annotations

import argparse
import sys

from .. import schemes
from ..argtypes import fraction, nonnegative_float, positive_float, positive_int
from ..evaluation import RTOLS
from ..report import describe_os_error
from ..training import CheckpointError, DivergenceError, OutputError, StalledError, presets
from ..training.presets import PRESETS
from .commands import cmd_bench, cmd_compress, cmd_eval, cmd_train
from .demo import cmd_demo
from .options import (
    add_checkpoint,
    add_config_options,
    add_data,
    add_device,
    add_run_flags,
    checkpoint_path,
)
from .reproduce import add_reproduce
from .study import add_study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contnet",
        description="Continuous-in-depth neural networks: train with refinement in depth, evaluate every "
        "manifestation (scheme x steps) of the same weights, compress.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_train, _eval, _compress, _demo, _bench):
        add(sub)
    add_reproduce(sub, add_device)
    add_study(sub, add_device)
    return p


def _train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a ContinuousNet or a ContinuousTransformer, optionally refining it in depth",
        description="Train a ContinuousNet (--model convnet) or a ContinuousTransformer "
        "(--model transformer); a checkpoint is written after every epoch.",
    )
    add_data(t)
    t.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        help="a paper's settings (options given beside it win): "
        + "; ".join(p.help_line() for p in PRESETS.values()).replace("%", "%%"),
    )
    add_config_options(t)
    t.add_argument(
        "--out", default="runs/train", help="output folder (checkpoint.pt, train.json, plots)"
    )
    t.set_defaults(parser=t)
    add_run_flags(t, "the run OUT holds (from OUT/checkpoint.pt)")
    t.set_defaults(func=cmd_train)


def _eval(sub) -> None:
    e = sub.add_parser(
        "eval",
        help="the manifestation table of a checkpoint",
        description="Test accuracy and output drift of one set of weights under schemes x step counts, with the empirical order of convergence of the drift.",
    )
    add_checkpoint(e)
    e.add_argument(
        "--steps",
        type=positive_int,
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
    e.add_argument(
        "--corruptions",
        action="store_true",
        help="also the accuracy on the test images under 8 corruptions x 5 severities "
        "(noises, blur, shift, rotation, contrast, occlusion; as MNIST-C/CIFAR-10-C), "
        "their mean, and a heatmap (corruptions.json, corruptions.png)",
    )
    e.add_argument(
        "--corruption-seed", type=int, default=0, help="seed of the corruptions (default 0)"
    )
    e.add_argument(
        "--rtols",
        type=positive_float,
        nargs="*",
        default=list(RTOLS),
        help="tolerances of the adaptive rows, batch-shared and per input (default 1e-1 ... "
        "1e-5; none: no adaptive rows); with accuracy_evaluations.png",
    )
    e.add_argument(
        "--adaptive-scheme",
        choices=list(schemes.PAIRS),
        default="dopri5",
        help="the embedded pair of the adaptive rows (default dopri5)",
    )
    e.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    add_device(e)
    e.set_defaults(func=cmd_eval)


def _compress(sub) -> None:
    c = sub.add_parser(
        "compress",
        help="cheaper manifestations of a checkpoint within an accuracy budget",
        description="Project onto fewer basis nodes and/or use another scheme or fewer steps; report parameters, inference latency and validation accuracy of each candidate and pick the fastest within --max-drop accuracy points of the original on the validation split (training images the model did not train on); the choice's test accuracy is reported after.",
    )
    add_checkpoint(c)
    c.add_argument(
        "--max-drop",
        type=nonnegative_float,
        default=1.0,
        help="validation accuracy points allowed to lose (default 1)",
    )
    c.add_argument(
        "--max-rel-drop",
        type=nonnegative_float,
        default=None,
        help="or (with --max-drop: and) the fraction of the original validation accuracy "
        "allowed to lose, e.g. 0.01",
    )
    c.add_argument(
        "--val-fraction",
        type=fraction,
        default=None,
        help="the validation split candidates are chosen on: this fraction of the training "
        "images (default: the one training held out, or 0.1)",
    )
    c.add_argument(
        "--candidate-n-basis",
        type=positive_int,
        nargs="+",
        default=None,
        help="basis sizes to try (default: halving)",
    )
    c.add_argument(
        "--steps",
        type=positive_int,
        nargs="+",
        default=None,
        help="step counts to try (default: n_steps, /2, /4, /8)",
    )
    c.add_argument(
        "--rtols",
        type=positive_float,
        nargs="+",
        default=None,
        help="also try adaptive steps to each of these tolerances (atol = rtol / 100), with "
        "--adaptive-scheme (default: fixed steps only)",
    )
    c.add_argument(
        "--adaptive-scheme",
        choices=list(schemes.PAIRS),
        default="dopri5",
        help="the embedded pair of the adaptive candidates (default dopri5)",
    )
    c.add_argument(
        "--save",
        type=checkpoint_path,
        default=None,
        help="write the chosen model as a checkpoint here",
    )
    c.add_argument(
        "--overwrite", action="store_true", help="replace the file --save names if it exists"
    )
    c.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    add_device(c)
    c.set_defaults(func=cmd_compress)


def _demo(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="the main job on digits (what `make demo` runs)",
        description="Refined training (K 1 -> 2 -> 4) against training at K = 4 from the start, the manifestation table, compression and plots, on scikit-learn's digits.",
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument(
        "--max-drop",
        type=nonnegative_float,
        default=1.0,
        help="accuracy points the compressed model may lose (default 1)",
    )
    d.add_argument("--quick", action="store_true", help="a short run (6 epochs) for smoke tests")
    add_config_options(d, depth=False)  # K 1 -> 2 -> 4, rk4, piecewise constant: set by the demo
    d.set_defaults(func=cmd_demo)


def _bench(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="microbenchmarks against pure-PyTorch stepping (see bench/README.md)",
        description="Run a benchmark suite: `contnet bench ops ...` or `contnet bench block ...` "
        "(the arguments go to the suite; add --help after its name for its options).",
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="suite and its options")
    b.set_defaults(func=cmd_bench)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None) and hasattr(args, "parser"):
        # the preset's settings become the defaults, so options given beside it win
        args.parser.set_defaults(**presets.get(args.preset).settings)
        args = parser.parse_args(argv)
    command = f"contnet {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        then = {
            "demo": "; run it again to start the demo over (it replaces its own runs)",
            "train": " (the run's last checkpoint too: --resume continues it)",
            "study": " (each run's last checkpoint too: --resume continues them)",
            "reproduce": " (each run's last checkpoint too: --resume continues them)",
        }.get(args.command, "")
        print(f"\n{command}: interrupted; what was written stays intact{then}", file=sys.stderr)
        return 130
    except (CheckpointError, DivergenceError, OutputError, StalledError) as e:
        raise SystemExit(f"{command}: {e}") from None
    except OSError as e:  # a write that failed: the disk, the file system, a path
        where = f" {e.filename}" if e.filename else ""
        raise SystemExit(f"{command}: cannot write{where}: {describe_os_error(e)}") from None
