"""The command line's options: argparse types that name what they expect, the options
generated from the job's config (:class:`contnet.training.TrainConfig`), and the groups
of options several commands share."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from .. import schemes
from ..argtypes import device, finite_float, fraction, positive_int
from ..training import TrainConfig
from ..training import data as data_lib


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
        help="digits (bundled with scikit-learn), cifar10 or cifar100 (--data-dir)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder of the CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin) "
        "or of CIFAR-100's (train.bin, test.bin)",
    )


def add_device(p):
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda (default cpu)")


# the argparse type of each kind of option a config field declares
KINDS = {
    "positive_int": {"type": positive_int},
    "positive_ints": {"type": positive_int, "nargs": "+"},
    "ints": {"type": int, "nargs": "*", "metavar": "EPOCH"},
    "int": {"type": int},
    "float": {"type": finite_float},
    "fraction": {"type": fraction},
    "device": {"type": device},
}


def add_config_options(p, config=TrainConfig, depth=True):
    """The options of ``config``'s fields that declare one (see
    :func:`contnet.training.config.option`), in their groups, with the field's default;
    ``depth=False`` leaves out the depth options (basis, scheme, steps, refinement), which
    the demo sets itself. A choice of None is given as ``none``."""
    groups = {}
    for f in dataclasses.fields(config):
        spec = f.metadata.get("cli")
        if spec is None or (spec["depth"] and not depth):
            continue
        if spec["group"] not in groups:
            groups[spec["group"]] = p.add_argument_group(spec["group"])
        g, default = groups[spec["group"]], f.default
        if spec["kind"] == "no_flag":
            g.add_argument(
                f"--no-{f.name.replace('_', '-')}",
                dest=f.name,
                action="store_false",
                help=spec["help"],
            )
            continue
        kw = dict(KINDS.get(spec["kind"], {}))
        if spec["choices"] is not None:
            kw["type"] = _choice(spec["choices"])
            kw["metavar"] = "{" + ",".join(_shown(c) for c in spec["choices"]) + "}"
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_ = spec["help"] if default is None else f"{spec['help']} (default {shown or 'none'})"
        g.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, default=default, help=help_, **kw
        )


def _shown(choice) -> str:
    return "none" if choice is None else str(choice)


def _choice(choices):
    """An argparse type: one of ``choices`` by its name (None as ``none``)."""
    by_name = {_shown(c): c for c in choices}

    def parse(text: str):
        if text not in by_name:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(by_name)}, got {text!r}")
        return by_name[text]

    return parse


def config_from(args, config=TrainConfig, **overrides):
    """The ``config`` the parsed ``args`` give (every field they hold), with ``overrides``."""
    kw = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)
    }
    kw.update(overrides)
    try:
        return config(**kw)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"contnet {getattr(args, 'command', 'train')}: {e}") from None


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


def add_run_flags(p, what: str = "the runs OUT holds") -> None:
    """``--resume`` or ``--overwrite`` (not both) of a command that trains under OUT:
    without either, a run already there is refused."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help=f"continue {what} (finished ones stay)")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} (without it, or --resume, an existing run is refused)",
    )
