"""The output folder of a run: checked before any work is done, never replaced unless asked,
written by one process at a time, and cleared of what a killed writer left half-written.

A folder holds a run when any file a run writes is in it (:data:`RUN_FILES`). Starting a
run there needs ``resume`` (continue it) or ``overwrite`` (replace it: its files are
removed first). The lock is an exclusive ``flock`` on ``.lock`` in the folder, which the
system releases when its holder ends however it ends (a kill included); the file names
the holder for the message another run gets."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket

from ..provenance import command_line
from ..report import OutputError, check_writable, is_leftover

__all__ = [
    "EVAL_FILES",
    "RunLock",
    "RUN_FILES",
    "held_by",
    "leftovers",
    "prepare_run",
]

#: the files a run writes into its folder
RUN_FILES = (
    "checkpoint.pt",
    "checkpoint.json",
    "train.json",
    "training_curves.png",
    "theta.png",
    "eval.json",
    "manifestations.png",
    "accuracy_evaluations.png",
    "corruptions.json",
    "corruptions.png",
    "compress.json",
)
#: what eval writes beside a checkpoint
EVAL_FILES = (
    "eval.json",
    "manifestations.png",
    "accuracy_evaluations.png",
    "corruptions.json",
    "corruptions.png",
)
LOCK = ".lock"


def leftovers(folder, *, remove: bool = True, log=None) -> list[pathlib.Path]:
    """The files a writer killed mid-write left in ``folder`` (:func:`contnet.report.is_leftover`:
    contnet's temporary files of a process of this host that is gone), removed unless
    ``remove`` is false, each reported to ``log`` if given; the previous ``NAME`` is intact."""
    folder = pathlib.Path(folder)
    found = []
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        if is_leftover(p.name):
            found.append(p)
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            if log is not None:
                verb = "removed" if remove else "found"
                log(f"{verb} {p.name}, a file left half-written by a process that was killed")
    return found


class RunLock:
    """The exclusive right to write a run's folder (see the module doc)."""

    def __init__(self, folder):
        self.path = pathlib.Path(folder) / LOCK
        self.fd = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputError(
                f"{self.path.parent} is being written by another run ({holder}); wait for it "
                "to end, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command_line(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.write(fd, (json.dumps(record) + "\n").encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc):
        self.release()


def held_by(folder) -> str | None:
    """Who holds ``folder``'s run lock, if a live process does (else None); the lock is not
    taken, and no lock file is made where there is none."""
    path = pathlib.Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        r = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {r['pid']} on {r['host']} since {r['since']}: {r['command']}"
    except (OSError, ValueError, KeyError):
        return "a process holds its lock"


def _describe_run(folder: pathlib.Path, files: list[str]) -> str:
    """The run a folder holds in words: its checkpoint's epoch (read from the checkpoint
    itself, not its summary, which a kill can leave behind) and its files."""
    from .checkpoint_file import CheckpointError, load_checkpoint

    try:
        meta = load_checkpoint(folder / "checkpoint.pt")["meta"]
        total = (meta.get("train") or {}).get("epochs")
        done = f"epoch {meta['epoch'] + 1}" + (f" of {total}" if total else "")
        return f"{done}; {', '.join(files)}"
    except (CheckpointError, KeyError, TypeError):
        return ", ".join(files)


def prepare_run(folder, *, resume: bool, overwrite: bool, log=print) -> RunLock:
    """Before any work: ``folder`` checked writable, locked, cleared of a killed writer's
    partial files (each reported), and refused if it holds a run that is neither resumed
    nor to be overwritten (``overwrite`` removes that run's files), or a run's files
    without a checkpoint to resume from unless ``overwrite``. Returns the held lock."""
    folder = check_writable(folder, files=RUN_FILES)
    lock = RunLock(folder).acquire()
    try:
        leftovers(folder, log=log)
        present = [f for f in RUN_FILES if (folder / f).exists()]
        resumable = (folder / "checkpoint.pt").exists()
        if present and not resumable and not overwrite:
            # nothing to continue: --resume would start afresh over the files there
            raise OutputError(
                f"{folder} holds a run's files ({', '.join(present)}) but no checkpoint.pt "
                "to resume from: pass --overwrite to replace them, or choose another --out"
            )
        if present and not resume and not overwrite:
            raise OutputError(
                f"{folder} holds a run ({_describe_run(folder, present)}): pass --resume to "
                "continue it, or --overwrite to replace it"
            )
        if present and overwrite and not resume:
            for f in present:
                (folder / f).unlink()
            log(f"--overwrite: removed the run in {folder} ({', '.join(present)})")
    except BaseException:
        lock.release()
        raise
    return lock
