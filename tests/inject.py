"""A training run with a fault injected, for the tests: ``python -m tests.inject ARGS...``
runs ``contnet ARGS...`` (under ``torchrun`` too) with ``CONTNET_INJECT=SIGNAL:RANK:EPOCH``
sending ``SIGNAL`` (``kill`` or ``stop``) to process ``RANK`` as epoch ``EPOCH`` (from 1)
starts, once the checkpoint of the epoch before it is on disk, or (``EPOCH`` 0) before the
process group is up: a kill or a stall at a known point, the same on every run."""

import json
import os
import pathlib
import signal
import sys
import time

from contnet import cli
from contnet.training import loop

SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def main() -> int:
    kind, rank, epoch = os.environ["CONTNET_INJECT"].split(":")
    rank, epoch = int(rank), int(epoch)
    if epoch == 0 and int(os.environ.get("RANK", "0")) == rank:  # before it even starts
        os.kill(os.getpid(), SIGNALS[kind])
    summary = pathlib.Path(sys.argv[sys.argv.index("--out") + 1]) / "checkpoint.json"
    real = loop._train_epoch

    def injected(*args):
        if int(os.environ.get("RANK", "0")) == rank and args[-1].epoch + 1 == epoch:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the checkpoint of the epoch before
                try:
                    if json.loads(summary.read_text())["epoch"] == epoch - 2:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.05)
            os.kill(os.getpid(), SIGNALS[kind])
        return real(*args)

    loop._train_epoch = injected
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
