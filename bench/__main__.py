"""python -m bench [ops] [options]: run a benchmark suite (see bench/README.md)."""

import sys

from . import block_bench, ops_bench

SUITES = {"ops": ops_bench.main, "block": block_bench.main}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    suite = argv.pop(0) if argv and argv[0] in SUITES else "ops"
    SUITES[suite](argv)


if __name__ == "__main__":
    main()
