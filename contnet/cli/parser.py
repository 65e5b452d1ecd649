"""The command line's parser: ``contnet <command> [options]``."""

from __future__ import annotations

import argparse
import math
import pathlib

import torch

from .. import schemes
from ..basis import FAMILIES
from ..nn import ACTIVATIONS
from ..training import data as data_lib
from .commands import cmd_bench, cmd_compress, cmd_eval, cmd_train
from .demo import cmd_demo


def positive_int_arg(text: str) -> int:
    """An argparse type: an int >= 1 (argparse names the option in its error)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def finite_float(text: str) -> float:
    """An argparse type: a finite float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    v = finite_float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return v


def checkpoint_path(text: str) -> str:
    """An argparse type: a checkpoint path (its metadata goes to the .json beside it)."""
    if pathlib.Path(text).suffix == ".json":
        raise argparse.ArgumentTypeError(
            f"must not end in .json (the checkpoint's metadata goes to PATH.json), got {text!r}"
        )
    return text


def add_data(p, default="digits"):
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


def device_arg(text: str) -> str:
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


def add_device(p):
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda (default cpu)")


def add_train_options(p, depth=True):
    """The training options; ``depth=False`` leaves out the basis, scheme, step and
    refinement options (the demo sets those itself)."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--widths",
        type=positive_int_arg,
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
            type=positive_int_arg,
            default=1,
            help="basis nodes K at the start (default 1)",
        )
        g.add_argument(
            "--scheme", choices=schemes.names(), default="rk4", help="training scheme (default rk4)"
        )
        g.add_argument(
            "--n-steps",
            type=positive_int_arg,
            default=None,
            help="steps per block (default: K, doubled with K on refinement)",
        )
    g.add_argument("--act", choices=list(ACTIVATIONS), default="relu")
    g.add_argument("--norm", choices=["batch", "none"], default="batch")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int_arg, default=18)
    g.add_argument("--batch-size", type=positive_int_arg, default=64)
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
        type=fraction,
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
    add_device(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    """What eval and compress read: the checkpoint, its data and the schemes to try."""
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint written by train or compress --save"
    )
    add_data(p, default=None)
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
    add_data(t)
    add_train_options(t)
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
    add_checkpoint(e)
    e.add_argument(
        "--steps",
        type=positive_int_arg,
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
    add_device(e)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser(
        "compress",
        help="cheaper manifestations of a checkpoint within an accuracy budget",
        description="Project onto fewer basis nodes and/or use another scheme or fewer steps; report parameters, inference latency and validation accuracy of each candidate and pick the fastest within --max-drop accuracy points of the original on the validation split (training images the model did not train on); the choice's test accuracy is reported after.",
    )
    add_checkpoint(c)
    c.add_argument(
        "--max-drop",
        type=finite_float,
        default=1.0,
        help="validation accuracy points allowed to lose (default 1)",
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
        type=positive_int_arg,
        nargs="+",
        default=None,
        help="basis sizes to try (default: halving)",
    )
    c.add_argument(
        "--steps",
        type=positive_int_arg,
        nargs="+",
        default=None,
        help="step counts to try (default: n_steps, /2, /4, /8)",
    )
    c.add_argument(
        "--save",
        type=checkpoint_path,
        default=None,
        help="write the chosen model as a checkpoint here",
    )
    c.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    add_device(c)
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser(
        "demo",
        help="the main job on digits (what `make demo` runs)",
        description="Refined training (K 1 -> 2 -> 4) against training at K = 4 from the start, the manifestation table, compression and plots, on scikit-learn's digits.",
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument(
        "--max-drop",
        type=finite_float,
        default=1.0,
        help="accuracy points the compressed model may lose (default 1)",
    )
    d.add_argument("--quick", action="store_true", help="a short run (6 epochs) for smoke tests")
    add_train_options(d, depth=False)  # K 1 -> 2 -> 4, rk4, piecewise constant: set by the demo
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser(
        "bench",
        help="microbenchmarks against pure-PyTorch stepping (see bench/README.md)",
        description="Run a benchmark suite: `contnet bench ops ...` or `contnet bench block ...` "
        "(the arguments go to the suite; add --help after its name for its options).",
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="suite and its options")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
