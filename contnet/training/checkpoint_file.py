"""The checkpoint file: written atomically (synced, renamed into place) with a JSON summary
derived from it, read with ``weights_only=True`` (no code is ever unpickled) and checked,
every problem a :class:`CheckpointError` naming the file: missing, a folder, not a
checkpoint, its JSON summary given in its place, truncated, tampered with, or holding
non-finite weights (a run that diverged)."""

from __future__ import annotations

import contextlib
import errno
import json
import pathlib
import shutil
import signal
import threading

import torch

from ..report import atomic_write, strict

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "check_finite",
    "load_checkpoint",
    "summary_path",
    "sync_summary",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "contnet-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, tampered with or mismatched."""


def summary_path(path) -> pathlib.Path:
    """The JSON summary beside a checkpoint: its metadata, for people and tools to read."""
    return pathlib.Path(path).with_suffix(".json")


def _meta_text(meta: dict, indent=None) -> str:
    return json.dumps(strict(meta), indent=indent, allow_nan=False)


def write_checkpoint(path, payload: dict, meta: dict) -> pathlib.Path:
    """Write ``payload`` (its ``meta`` the JSON of ``meta``) at ``path`` atomically, then
    its summary from the same ``meta``: a failure leaves the previous checkpoint as it
    was, and says what happened (a full disk shows as one, not as torch's
    ``unexpected pos``)."""
    path = pathlib.Path(path)
    payload = {**payload, "meta": _meta_text(meta)}
    with _interrupts_held():  # a Ctrl-C lands after both files, which then agree
        try:
            atomic_write(path, lambda p: torch.save(payload, p))
        except RuntimeError as e:  # torch's writer reports a failed write so
            free = shutil.disk_usage(path.parent).free
            if free < 1 << 20:
                raise OSError(
                    errno.ENOSPC, f"the disk is full ({free} bytes free)", str(path)
                ) from e
            raise OSError(errno.EIO, f"writing failed: {str(e).splitlines()[0]}", str(path)) from e
        atomic_write(summary_path(path), lambda p: p.write_text(_meta_text(meta, 1) + "\n"))
    return path


@contextlib.contextmanager
def _interrupts_held():
    """SIGINT and SIGTERM held back while the block runs: recorded, and raised again to
    their own handlers when it ends (in the main thread, where Python handles signals;
    elsewhere nothing is held)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    before = {
        s: signal.signal(s, lambda signum, frame: received.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


def sync_summary(path) -> bool:
    """Rewrite the summary of the checkpoint at ``path`` from the checkpoint where it is
    missing or disagrees (a run killed between the two writes); True if it did."""
    path = pathlib.Path(path)
    meta = load_checkpoint(path)["meta"]
    try:
        if json.loads(summary_path(path).read_text()) == json.loads(_meta_text(meta)):
            return False
    except (OSError, ValueError):
        pass
    atomic_write(summary_path(path), lambda p: p.write_text(_meta_text(meta, 1) + "\n"))
    return True


def _require(ok: bool, path, what: str) -> None:
    if not ok:
        raise CheckpointError(f"checkpoint {path} {what}")


def _check_meta(meta, path) -> None:
    """The metadata's structure: what the loaders read, of the types they read it as."""
    _require(isinstance(meta, dict), path, "has metadata that is not a JSON object")
    for key in ("model", "state"):
        _require(key in meta, path, f"metadata lacks {key!r}")
    _require(meta["model"] is None or isinstance(meta["model"], dict), path, "has a bad 'model'")
    state = meta["state"]
    _require(isinstance(state, dict), path, "has a 'state' that is not a JSON object")
    lists = [state.get(k) for k in ("n_basis", "basis", "scheme", "n_steps")]
    _require(
        all(isinstance(v, list) for v in lists) and len({len(v) for v in lists}) == 1,
        path,
        "has a 'state' without equal lists n_basis, basis, scheme and n_steps",
    )
    for key in ("layers", "blocks"):
        entries = state.get(key, {})
        _require(
            isinstance(entries, dict)
            and all(isinstance(v, list) and len(v) == 2 for v in entries.values()),
            path,
            f"has a state {key!r} that is not a map of pairs",
        )
    tolerances = state.get("tolerances", {})
    _require(
        isinstance(tolerances, dict)
        and all(
            isinstance(v, list)
            and len(v) in (3, 4)
            and isinstance(v[0], (int, float))
            and (v[1] is None or isinstance(v[1], (int, float)))
            and isinstance(v[2], bool)
            and (len(v) == 3 or v[3] is None or isinstance(v[3], dict))
            for v in tolerances.values()
        ),
        path,
        "has a state 'tolerances' that is not a map of [rtol, atol, per_sample, controller]",
    )
    drops = state.get("stochastic_depth", {})
    _require(
        isinstance(drops, dict) and all(isinstance(v, dict) for v in drops.values()),
        path,
        "has a state 'stochastic_depth' that is not a map of settings",
    )
    epoch = meta.get("epoch", 0)
    _require(isinstance(epoch, int) and epoch >= 0, path, f"has a bad epoch {epoch!r}")
    history = meta.get("history", [])
    _require(
        isinstance(history, list) and all(isinstance(h, dict) for h in history),
        path,
        "has a history that is not a list of epochs",
    )
    train = meta.get("train")
    _require(train is None or isinstance(train, dict), path, "has a 'train' that is not a map")


def load_checkpoint(path) -> dict:
    """Read a checkpoint with ``weights_only=True``; returns the payload with ``meta``
    parsed and checked. Raises :class:`CheckpointError` naming the file and the problem."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".json" and path.with_suffix(".pt").is_file():
        raise CheckpointError(
            f"{path} is the JSON summary of a checkpoint; pass {path.with_suffix('.pt')}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        if not _is_archive(path):
            raise CheckpointError(
                f"{path} is not a checkpoint (not a file that torch.save writes)"
            ) from None
        if "Weights only load failed" in str(e):  # (torch's advice to unpickle is not ours)
            raise CheckpointError(
                f"checkpoint {path} cannot be read safely: it holds objects that "
                "weights_only loading refuses (code, classes), which no contnet checkpoint "
                "holds: it was tampered with or written by something else"
            ) from None
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely (truncated or corrupt): "
            f"{type(e).__name__}: {first}"
        ) from e
    tag = payload.get("format") if isinstance(payload, dict) else None
    if not (isinstance(tag, str) and tag == CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path} is not a contnet checkpoint (no '{CHECKPOINT_FORMAT}' format tag)"
        )
    version = payload.get("version")
    if not (type(version) is int and version == CHECKPOINT_VERSION):
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this contnet "
            f"reads version {CHECKPOINT_VERSION}"
        )
    try:
        payload["meta"] = json.loads(payload["meta"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable metadata: {e}") from e
    _check_meta(payload["meta"], path)
    weights = payload.get("model")
    _require(
        isinstance(weights, dict)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()),
        path,
        "has no state dict of tensors under 'model'",
    )
    payload["path"] = str(path)  # for the errors of the loaders
    return payload


def check_finite(payload: dict) -> None:
    """Refuse a checkpoint whose weights are not all finite (a run that diverged), naming
    the tensors."""
    bad = [
        name
        for name, t in payload["model"].items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"checkpoint {payload.get('path', '')} holds non-finite weights in {len(bad)} of "
            f"{len(payload['model'])} tensors ({shown}): the run it comes from diverged"
        )


def _is_archive(path: pathlib.Path) -> bool:
    """Whether ``path`` starts as the zip archive ``torch.save`` writes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False
