"""``python -m contnet.bench`` (or ``contnet bench``) ``[ops|block|inference|backprop|adaptive]
[options]``: run one suite, or every suite with no name (see bench/README.md)."""

import sys

from ..report import OutputError
from . import adaptive_bench, backprop_bench, block_bench, inference_bench, ops_bench

SUITES = {
    "ops": ops_bench.main,
    "block": block_bench.main,
    "inference": inference_bench.inference_main,
    "backprop": backprop_bench.main,
    "adaptive": adaptive_bench.main,
}


def main(argv=None):
    try:
        _main(argv)
    except OutputError as e:
        raise SystemExit(f"contnet bench: {e}") from None


def _main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUITES:
        SUITES[argv.pop(0)](argv)
        return
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv and not argv[0].startswith("-"):
        raise SystemExit(
            f"contnet bench: unknown suite {argv[0]!r}; expected one of {', '.join(SUITES)} "
            "(or none: every suite)"
        )
    for run in SUITES.values():
        run(argv)


if __name__ == "__main__":
    main()
