"""Presenting results, for the commands, the plots and the benchmarks alike: plain-text
tables with right-aligned columns, strict JSON files, and matplotlib figures drawn without
a display and saved at one resolution; every file written atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pathlib
import re
import socket

__all__ = [
    "OutputError",
    "atomic_write",
    "is_leftover",
    "temporary_path",
    "check_files",
    "check_writable",
    "describe_os_error",
    "format_table",
    "strict",
    "write_json",
    "pyplot",
    "save_figure",
]


def format_table(rows, header) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join(
        [line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]]
    )


#: a file being written atomically: ``.NAME.contnet-tmp-HOST-PID`` beside ``NAME``
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.contnet-tmp-(?P<host>[A-Za-z0-9-]*)-(?P<pid>\d+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def temporary_path(path, pid: int | None = None) -> pathlib.Path:
    """Where :func:`atomic_write` writes ``path`` first: ``.NAME.contnet-tmp-HOST-PID``
    beside it, named by its writer (host and process) so that only a writer known to be
    gone has its file cleared (:func:`is_leftover`)."""
    path = pathlib.Path(path)
    pid = os.getpid() if pid is None else pid
    return path.with_name(f".{path.name}.contnet-tmp-{_host()}-{pid}")


def is_leftover(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write` whose writer was killed:
    written on this host by a process that no longer runs. Another host's (a shared
    folder) and anything contnet did not name so are never taken for one."""
    m = _TEMPORARY.match(name)
    if m is None or m["host"] != _host():
        return False
    pid = int(m["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def atomic_write(path, write) -> pathlib.Path:
    """``write(tmp)`` into a temporary file beside ``path`` (:func:`temporary_path`), synced
    to disk, renamed over ``path``, and the folder synced: a reader sees the previous file or
    the new one, never a part; if anything fails the previous file stays and the temporary
    one is removed (one a kill leaves is named by its writer, for the next run to clear)."""
    path = pathlib.Path(path)
    tmp = temporary_path(path)
    try:
        _write_named(write, tmp, path)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _write_named(lambda t: os.replace(t, path), tmp, path)
        with contextlib.suppress(OSError):  # not every file system syncs a folder
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _write_named(write, tmp: pathlib.Path, path: pathlib.Path) -> None:
    """``write(tmp)``; a failure to write is reported for ``path`` (the file asked for,
    not the temporary one)."""
    try:
        write(tmp)
    except OSError as e:
        if e.filename in (None, str(tmp), tmp):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def strict(obj):
    """``obj`` with every non-finite float (NaN, +-inf) as None: JSON that strict parsers
    read (``json.dumps`` would write the non-standard ``NaN``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path, payload) -> pathlib.Path:
    """``payload`` as indented strict JSON (:func:`strict`; other objects as ``str``) at
    ``path``, written atomically (folders made)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(strict(payload), indent=1, default=str, allow_nan=False) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("plots need matplotlib: pip install 'contnet[cli]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> pathlib.Path:
    """Save ``fig`` as ``path`` (110 dpi; folders made; atomically) and close it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda p: fig.savefig(p, dpi=110, format=path.suffix[1:] or "png"))
    finally:
        pyplot().close(fig)
    return path


class OutputError(OSError):
    """An output location that cannot be used, or a run there that is not to be replaced;
    the message says which and what to do."""


def describe_os_error(e: OSError) -> str:
    """An ``OSError`` in words: what happened (disk full, read-only, not a folder, ...)."""
    what = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder",
        errno.ENOENT: "no such file or folder",
    }.get(e.errno)
    return what or (e.strerror or str(e))


def check_files(folder, names, what: str = "--out") -> None:
    """None of the files a command will write into ``folder`` is in the way as a folder."""
    for name in names:
        if (pathlib.Path(folder) / name).is_dir():
            raise OutputError(f"{what} {folder}: {name}, which it writes, is a folder there")


def check_writable(folder, what: str = "--out", files=()) -> pathlib.Path:
    """Make ``folder`` if it is missing and check that files can be written in it (a probe
    file is written, synced and removed) and that none of ``files`` (those the command will
    write) is a folder there; raise :class:`OutputError` naming the problem (``what``: the
    option it came from, for the message)."""
    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()
    except OSError as e:
        raise OutputError(f"{what} {folder} cannot be written: {describe_os_error(e)}") from None
    check_files(folder, files, what)
    return folder
