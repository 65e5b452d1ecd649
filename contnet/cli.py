"""Command line: ``contnet <command>`` or ``python -m contnet <command>``."""

from __future__ import annotations

import argparse
import sys

import torch

from . import ops
from .models import ContinuousNet
from .train import manifestation_drift


def _drift_table(table, steps) -> str:
    head = f"{'scheme':<10}" + "".join(f"{n:>10}" for n in steps) + f"{'order':>8}"
    lines = [head, "-" * len(head)]
    for scheme, row in table.items():
        cells = "".join(f"{row['drift'][n]:>10.2e}" for n in steps)
        lines.append(f"{scheme:<10}{cells}{row['order']:>8.2f}")
    return "\n".join(lines)


def cmd_demo(args) -> int:
    torch.manual_seed(args.seed)
    print(f"contnet demo: kernels: {ops.backend()}")
    net = ContinuousNet(3, 10, n_basis=args.n_basis, basis=args.basis, act=args.act).double().eval()
    x = torch.randn(args.batch, 3, 32, 32, dtype=torch.float64)
    schemes = ["euler", "midpoint", "heun", "ralston", "rk3", "ssprk3", "rk4", "rk4_38"]
    steps = [1, 2, 4, 8, 16, 32]
    table = manifestation_drift(net, x, schemes, steps, reference=("rk4", 64))
    print(
        f"ContinuousNet widths (16, 32, 64), basis {args.basis} K={args.n_basis}, act {args.act}, "
        f"batch {args.batch} (untrained, float64)\nrelative output drift against rk4 with 64 steps, "
        "per scheme and n_steps; order fitted on n_steps >= K:\n"
    )
    print(_drift_table(table, steps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contnet", description="Continuous-in-depth neural networks.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo", help="evaluate a ContinuousNet under every scheme and several step counts"
    )
    d.add_argument("--basis", default="fem_linear")
    d.add_argument("--n-basis", type=int, default=5)
    d.add_argument(
        "--act", default="tanh", help="smooth rates show each scheme's order; relu caps it near 2"
    )
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
