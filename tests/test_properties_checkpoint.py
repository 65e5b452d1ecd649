"""Property-based tests of checkpoint loading: a valid checkpoint, truncated, with bytes
overwritten, or with any field of its payload or metadata replaced or removed, is either
loaded or refused with CheckpointError naming the file -- by load_checkpoint, by
model_from_checkpoint, by load_model_state and by a resumed training run alike."""

import json
import pathlib
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import contnet
from contnet import training as train
from contnet.training import checkpoint, data

from .helpers import count_case

JUNK = [None, 3, -1, 2.5, "x", [], {}, [1, "a"], {"a": 1}, True]
TENSORS = [torch.zeros(2), torch.zeros(3, dtype=torch.int64), torch.zeros(0)]
PAYLOAD_PATHS = [
    ("format",),
    ("version",),
    ("meta",),
    ("model",),
    ("model", "stages.0.unit.conv1.weight"),
    ("model", "stem.weight"),
    ("optimizer",),
    ("optimizer", "state"),
    ("optimizer", "param_groups"),
    ("scheduler",),
    ("scheduler", "last_epoch"),
    ("rng",),
    ("rng", "torch"),
    ("rng", "loader"),
    ("rng", "loader_ranks"),
]
META_PATHS = [
    ("model",),
    ("model", "widths"),
    ("model", "in_channels"),
    ("model", "basis"),
    ("model", "scheme"),
    ("state",),
    ("state", "n_basis"),
    ("state", "basis"),
    ("state", "scheme"),
    ("state", "n_steps"),
    ("state", "layers"),
    ("state", "layers", "stages.0.unit.conv1"),
    ("state", "layers", "stages.0.unit.norm1"),
    ("state", "blocks"),
    ("state", "blocks", "stages.0"),
    ("epoch",),
    ("history",),
    ("train",),
    ("train", "epochs"),
    ("train", "lr"),
    ("train", "val_fraction"),
]
CFG = train.TrainConfig(
    widths=(2,),
    basis="fem_linear",
    n_basis=2,
    epochs=2,
    refine_at=(1,),
    batch_size=32,
    progress=False,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A finished two-epoch run (refined once) and its data."""
    ds = data.load_digits()
    ds.x_train, ds.y_train, ds.x_test, ds.y_test = (
        ds.x_train[:64],
        ds.y_train[:64],
        ds.x_test[:16],
        ds.y_test[:16],
    )
    out = tmp_path_factory.mktemp("run")
    train.train(CFG, out, ds, log=lambda *a: None)
    return out / "checkpoint.pt", ds


def _set(tree, path, value):
    *head, last = path
    for key in head:
        tree = tree[key] if isinstance(tree, dict) else None
        if not isinstance(tree, dict):
            return
    if value is _DELETE:
        tree.pop(last, None)
    else:
        tree[last] = value


_DELETE = object()


def _load_everything(path: pathlib.Path, ds, run_dir: pathlib.Path):
    payload = checkpoint.load_checkpoint(path)
    checkpoint.model_from_checkpoint(payload, n_basis=3)
    fresh = contnet.ContinuousNet(1, 10, (2,), 2, basis="fem_linear")
    checkpoint.load_model_state(payload, fresh)
    shutil.copy(path, run_dir / "checkpoint.pt")
    train.train(CFG, run_dir, ds, resume=True, log=lambda *a: None)


def _tamper(path: pathlib.Path, bad: pathlib.Path, how: str, where=None, value=None, cuts=()):
    """Write ``path`` tampered with to ``bad``: ``truncate`` at ``cuts[0]``, ``bytes``
    overwritten at ``cuts``, or the ``payload`` / ``meta`` field at ``where`` set to
    ``value`` (``_DELETE`` removes it)."""
    raw = path.read_bytes()
    if how == "truncate":
        bad.write_bytes(raw[: cuts[0]])
    elif how == "bytes":
        raw = bytearray(raw)
        for i, v in cuts:
            raw[i % len(raw)] = v
        bad.write_bytes(bytes(raw))
    else:
        payload = torch.load(path, weights_only=True)
        if how == "payload":
            _set(payload, where, value)
        elif how == "meta":
            meta = json.loads(payload["meta"])
            _set(meta, where, value.tolist() if isinstance(value, torch.Tensor) else value)
            payload["meta"] = json.dumps(meta)
        torch.save(payload, bad)


def _loaded_or_refused(bad: pathlib.Path, ds, run_dir: pathlib.Path) -> None:
    try:
        _load_everything(bad, ds, run_dir)
    except checkpoint.CheckpointError as e:
        assert str(bad) in str(e) or str(run_dir / "checkpoint.pt") in str(e), e


@settings(max_examples=max(20, settings.default.max_examples // 3))
@given(data=st.data())
def test_any_tampered_checkpoint_is_loaded_or_refused_by_name(data, saved, tmp_path_factory):
    count_case("api.checkpoint")
    draw = data.draw
    path, ds = saved
    run_dir = tmp_path_factory.mktemp("case")
    size = path.stat().st_size
    how = draw(st.sampled_from(["truncate", "bytes", "payload", "meta", "none"]))
    value = draw(st.sampled_from([*JUNK, *TENSORS, _DELETE]))
    where = draw(st.sampled_from(PAYLOAD_PATHS if how == "payload" else META_PATHS))
    if how == "truncate":
        cuts = [draw(st.integers(0, size - 1))]
    else:
        byte = st.tuples(st.integers(0, size - 1), st.integers(0, 255))
        cuts = draw(st.lists(byte, min_size=1, max_size=8))
    bad = run_dir / "tampered.pt"
    _tamper(path, bad, how, where, value, cuts)
    _loaded_or_refused(bad, ds, run_dir)


# found by make fuzz: a tensor where the version number belongs compared as a tensor
PINNED = [("payload", ("version",), torch.zeros(2)), ("payload", ("format",), torch.zeros(2))]


@pytest.mark.parametrize("how, where, value", PINNED)
def test_pinned_tampered_checkpoints(how, where, value, saved, tmp_path):
    path, ds = saved
    _tamper(path, tmp_path / "tampered.pt", how, where, value)
    with pytest.raises(checkpoint.CheckpointError, match="tampered.pt"):
        _load_everything(tmp_path / "tampered.pt", ds, tmp_path)
