"""Checkpoints: a ``torch.save`` of plain data (state dicts, RNG states, a JSON metadata
string), written to a temporary file and renamed into place, read back with
``weights_only=True`` (no code is ever unpickled).

Any module can be saved. The metadata records the weight basis of every time-dependent
layer and the manifestation of every block, so that the module rebuilt at another depth
(a ContinuousNet or ContinuousTransformer from its config by :func:`model_from_checkpoint`;
any module the user builds, by :func:`load_model_state`) is first brought to the saved
depth, then loaded.
Reading a checkpoint raises nothing but :class:`CheckpointError`, naming the file and
the reason."""

from __future__ import annotations

import copy
import dataclasses
import pathlib

import torch
from torch import nn

from .. import basis as basis_lib
from .. import schemes as schemes_lib
from ..block import ContinuousBlock, StochasticDepth, blocks_of
from ..integrate import Controller
from ..models import NETWORKS, ContinuousNet, project, refine
from ..nn import TimeDependent, map_bases
from .checkpoint_file import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    check_finite,
    load_checkpoint,
    write_checkpoint,
)

__all__ = [
    "CheckpointError",
    "check_finite",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "load_model_state",
    "model_state",
]

# what loading a checkpoint's contents can raise when they are not what they should be
_CONTENT_ERRORS = (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError)


def model_state(model: nn.Module) -> dict:
    """What describes a model's current depth discretisation (metadata of checkpoints):
    per block (in module order) its unit's basis and its manifestation; ``layers``: the
    basis of every time-dependent layer, ``blocks``: the manifestation of every block,
    both by module name."""
    blocks = blocks_of(model)
    units = [b.unit for b in blocks]
    return {
        "n_basis": [getattr(u, "n_basis", None) for u in units],
        "basis": [getattr(getattr(u, "basis", None), "family", None) for u in units],
        "scheme": [schemes_lib.name_of(b.scheme) for b in blocks],
        "n_steps": [b.n_steps for b in blocks],
        "layers": {
            name: [m.basis.family, m.basis.n_basis]
            for name, m in model.named_modules()
            if isinstance(m, TimeDependent)
        },
        "blocks": {
            name: [schemes_lib.name_of(m.scheme), m.n_steps]
            for name, m in model.named_modules()
            if isinstance(m, ContinuousBlock)
        },
        # the blocks that run to a tolerance: [rtol, atol, per_sample, controller settings or
        # None] (the others: fixed steps)
        "tolerances": {
            name: [m.rtol, m.atol, m.per_sample, _controller(m)]
            for name, m in model.named_modules()
            if isinstance(m, ContinuousBlock) and m.rtol is not None
        },
        # the blocks that drop steps in training: their StochasticDepth's settings
        "stochastic_depth": {
            name: dataclasses.asdict(m.stochastic_depth)
            for name, m in model.named_modules()
            if isinstance(m, ContinuousBlock) and m.stochastic_depth.active
        },
    }


def _controller(block) -> dict | None:
    """A block's controller as its settings (None: the default)."""
    return None if block.controller is None else dataclasses.asdict(block.controller)


def save_checkpoint(
    path,
    model,
    optimizer=None,
    scheduler=None,
    loader=None,
    *,
    config=None,
    epoch=0,
    history=(),
    extra=None,
    loader_states=None,
) -> pathlib.Path:
    """Write a checkpoint of any ``nn.Module`` atomically (temporary file, synced, renamed):
    the previous file stays intact if anything fails. A human-readable ``.json`` of the
    metadata goes beside it (:func:`contnet.training.checkpoint_file.sync_summary` derives
    it again from the checkpoint). A network of :data:`contnet.models.NETWORKS` is rebuilt from it by
    :func:`model_from_checkpoint`; another module is built by the user and loaded with
    :func:`load_model_state`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    path = pathlib.Path(path)
    if path.suffix == ".json":
        raise ValueError(
            f"path must not end in .json (the metadata goes to the path with a .json suffix), got {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if config is not None and not isinstance(config, dict):
        config = config.to_json()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model": model.config if isinstance(model, tuple(NETWORKS.values())) else None,
        "state": model_state(model),
        "epoch": epoch,
        "train": config,
        "history": list(history),
        "torch": torch.__version__,
        **(extra or {}),
    }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "loader": loader.generator.get_state() if loader is not None else None,
            "loader_ranks": loader_states,
        },
    }
    write_checkpoint(path, payload, meta)
    return path


def _where(payload) -> str:
    """The checkpoint in words, for messages; a payload that is not what
    :func:`load_checkpoint` returns is refused here."""
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("meta"), dict)
        and isinstance(payload.get("model"), dict)
    ):
        raise CheckpointError(
            "payload must be a checkpoint as load_checkpoint returns it (a dict with its "
            f"'meta' and 'model'), got {type(payload).__name__}"
        )
    return f"checkpoint {payload.get('path', '')}".rstrip()


def model_from_checkpoint(payload: dict, *, n_basis: int | None = None, device="cpu") -> nn.Module:
    """Rebuild the network (a :class:`ContinuousNet` or :class:`ContinuousTransformer`,
    by the class it records) of a checkpoint at the depth discretisation it
    was saved with and load its weights. With ``n_basis`` different from the saved one,
    the weights are refined (if ``n_basis`` is reached by refining) or projected (if
    smaller). A checkpoint of another module is refused: build it and use
    :func:`load_model_state`."""
    where = _where(payload)
    meta = payload["meta"]
    if meta["model"] is None:
        raise CheckpointError(
            f"{where} holds a {meta.get('class', 'module')}, not a network of contnet that it "
            "can rebuild from a config: build that module and load the checkpoint into it "
            "with contnet.checkpoint.load_model_state(payload, module)"
        )
    state = meta["state"]
    # the weight basis it was saved with: refine/project (compress --save, or the API's
    # project onto another family) change it from the one the model was built with
    # (as strings: a tampered entry may be a list, which a set does not take)
    if len(set(map(str, state["basis"]))) != 1 or len(set(map(str, state["n_basis"]))) != 1:
        raise CheckpointError(
            f"{where} has stages of different weight bases ({state['basis']}, n_basis "
            f"{state['n_basis']}); a network of contnet has one for all its stages"
        )
    kw = {**meta["model"], "basis": state["basis"][0], "n_basis": state["n_basis"][0]}
    network = NETWORKS.get(str(meta.get("class", "")).rpartition(".")[2], ContinuousNet)
    try:
        model = network.from_config(kw)
    except _CONTENT_ERRORS as e:
        raise CheckpointError(f"{where} describes a model that cannot be built: {e}") from e
    _load(model, payload, where, built=True)
    if n_basis is not None and n_basis != kw["n_basis"]:
        _to_n_basis(model, basis_lib.get(kw["basis"], kw["n_basis"]), n_basis, where)
    return model.to(device)


def _to_n_basis(model: nn.Module, saved: basis_lib.Basis, n_basis: int, where: str) -> None:
    """Refine ``model`` (whose bases are ``saved``) until they have ``n_basis`` nodes, or
    project it onto fewer."""
    b, reachable = saved, []
    try:
        while b.n_basis < n_basis:
            b = b.refined()
            reachable.append(b.n_basis)
        if reachable and reachable[-1] == n_basis:
            for _ in reachable:
                refine(model, steps=False)
            return
        if n_basis < saved.n_basis:
            project(model, n_basis, steps=False)
            return
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} cannot be taken to n_basis={n_basis!r}: {e}") from e
    raise CheckpointError(
        f"{where} has n_basis={saved.n_basis} ({saved.family}); n_basis={n_basis} is neither "
        f"reached by refinement ({[saved.n_basis] + reachable}) nor smaller (projection)"
    )


def load_model_state(payload: dict, model: nn.Module) -> nn.Module:
    """Load a checkpoint into ``model``, a module built as the saved one was (any module):
    its time-dependent layers are first brought to the bases they were saved with (refined
    or projected, by name), its blocks to the saved manifestations, then the state dict is
    loaded. Returns ``model``; raises :class:`CheckpointError` if they do not match, leaving
    ``model`` as it was (the load is tried on a copy first)."""
    where = _where(payload)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    try:
        trial = copy.deepcopy(model)
    except Exception:  # noqa: BLE001  (a module that cannot be copied is loaded in place)
        trial = None
    if trial is not None:
        _load(trial, payload, where)
        del trial
    _load(model, payload, where)
    return model


def _load(model: nn.Module, payload: dict, where: str, built: bool = False) -> None:
    """Bring ``model`` to the saved bases and manifestations, then load the weights.
    ``built``: the model was built from this metadata, so its bases are the saved ones
    already (a layer saved otherwise means the metadata contradict themselves)."""
    state = payload["meta"]["state"]
    try:
        saved = {n: basis_lib.get(*pair) for n, pair in state.get("layers", {}).items()}
        targets = {m: saved[n] for n, m in model.named_modules() if n in saved}
        moved = [(n, m.basis, saved[n]) for n, m in model.named_modules() if m in targets]
        moved = [(n, have, want) for n, have, want in moved if have != want]
        if built and moved:
            name, have, want = moved[0]
            raise CheckpointError(
                f"{where}'s metadata disagree: its model state gives {name} the basis "
                f"{have.family} with {have.n_basis} nodes, its layers {want.family} with "
                f"{want.n_basis}"
            )
        map_bases(model, lambda m: targets.get(m, m.basis), None)
        manifest = state.get("blocks", {})
        blocks = dict(model.named_modules())
        if not manifest:  # an older checkpoint: the blocks in order
            names = [n for n, m in blocks.items() if isinstance(m, ContinuousBlock)]
            manifest = {n: [s, k] for n, s, k in zip(names, state["scheme"], state["n_steps"])}
        tolerances = state.get("tolerances")  # (older checkpoints have none: as built)
        for name, (scheme, n_steps) in manifest.items():
            block = blocks.get(name)
            if not isinstance(block, ContinuousBlock):
                continue
            if schemes_lib.name_of(block.scheme) == scheme:  # (a user's tableau: kept by name)
                scheme = block.scheme
            if tolerances is None:
                block.manifest(scheme, n_steps, block.rtol, block.atol)
                continue
            rtol, atol, per_sample, *controller = tolerances.get(name, (None, None, False))
            block.manifest(scheme, n_steps, rtol, atol)
            block.per_sample = per_sample
            block.controller = Controller(**controller[0]) if controller and controller[0] else None
        if "stochastic_depth" in state:  # (older checkpoints have none: as built)
            for name, block in blocks.items():
                if isinstance(block, ContinuousBlock):
                    settings = state["stochastic_depth"].get(name)
                    block.stochastic_depth = StochasticDepth(**settings) if settings else 0.0
        model.load_state_dict(payload["model"])
    except CheckpointError:
        raise
    except _CONTENT_ERRORS as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(
            f"{where} weights do not fit the model: {type(e).__name__}: {detail}"
        ) from e
