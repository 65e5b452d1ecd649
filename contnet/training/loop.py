"""The training loop of the main job: refinement in depth at chosen epochs, a validation
split held out, a checkpoint after every epoch, resumable, data parallel under
``torchrun``."""

from __future__ import annotations

import math
import pathlib
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..block import blocks_of
from ..models import refine
from ..nn import Unit, conforms
from .checkpoint import (
    CheckpointError,
    check_finite,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from .checkpoint_file import sync_summary
from .config import LEGACY, RESUME_KEYS, TrainConfig, build_model, make_optimizer, make_scheduler
from .data import Dataset, Loader
from .distributed import Distributed, StalledError
from .rundir import prepare_run


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _n_basis(model: nn.Module) -> int:
    """The largest weight-basis size of the model's blocks' units."""
    return max((b.unit.n_basis for b in blocks_of(model) if conforms(b.unit, Unit)), default=0)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, device="cpu"
):
    """``(mean cross-entropy, accuracy)`` of ``model`` in eval mode (mode restored after)."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    model.train(was)
    return loss / len(x), correct / len(x)


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the install
        return iterable
    # disable=None: no bars when the output is not a terminal (logs stay readable)
    return tqdm(iterable, leave=False, dynamic_ncols=True, disable=None, **kw)


class DivergenceError(RuntimeError):
    """Training stopped at a non-finite loss or weight; the last finite checkpoint is kept."""


#: fewer training images than this in a class get a warning
MIN_PER_CLASS = 10


def train(
    cfg: TrainConfig,
    out_dir,
    dataset: Dataset,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
) -> dict:
    """Train the network of ``cfg`` (a ContinuousNet or a ContinuousTransformer) on
    ``dataset``; checkpoint to ``out_dir/checkpoint.pt`` after
    every epoch. At the start of each epoch in ``cfg.refine_at`` the model is refined in
    depth (``K`` and ``n_steps`` double) and the optimiser state is mapped the same way.
    A stratified ``cfg.val_fraction`` of the training images is held out (see
    :meth:`contnet.data.Dataset.with_validation`): it is not trained on, its accuracy is
    recorded every epoch, and compression chooses on it.

    ``out_dir`` is checked before any work and held for the run (see
    :func:`contnet.training.rundir.prepare_run`): a folder holding a run is refused unless
    ``resume`` (continue from ``out_dir/checkpoint.pt``, bitwise the same as an
    uninterrupted run on the same machine) or ``overwrite`` (replace it). A non-finite
    loss or weight stops training with :class:`DivergenceError` before anything is saved:
    the last finite checkpoint stays. Under ``torchrun`` with several processes the run is
    data parallel (see :class:`Distributed`): rank 0 logs, holds the folder and writes
    checkpoints; after a refinement the DDP wrapper is built anew. Returns
    ``{"history", "model", ...}``.
    """
    _check_buildable(cfg, dataset)  # before a run to overwrite is removed
    ddp = Distributed.from_env(cfg.device, cfg.dist_timeout)
    rank = ddp.rank if ddp else 0
    lock = None
    if rank == 0:
        lock = prepare_run(out_dir, resume=resume, overwrite=overwrite, log=log)
    try:
        return _train(cfg, pathlib.Path(out_dir), dataset, resume, ddp, log)
    finally:
        if lock is not None:
            lock.release()


def _check_buildable(cfg: TrainConfig, dataset: Dataset) -> None:
    """The validation split and the network of ``cfg`` can be made of ``dataset`` (a patch
    size that does not divide the images, say, is refused before anything is written)."""
    data = dataset.with_validation(cfg.val_fraction)
    kwargs = cfg.model_kwargs(data.in_channels, data.num_classes, data.x_train.shape[2:])
    with torch.device("meta"):
        build_model(kwargs, cfg.network())


def _train(cfg, out_dir: pathlib.Path, dataset: Dataset, resume: bool, ddp, log) -> dict:
    ckpt_path = out_dir / "checkpoint.pt"
    rank, world = (ddp.rank, ddp.world_size) if ddp else (0, 1)
    device = ddp.device if ddp else torch.device(cfg.device)
    log = log if rank == 0 else _silent
    torch.manual_seed(cfg.seed)
    data = dataset.with_validation(cfg.val_fraction)
    _warn_small_classes(data, log)
    loader = _loader(data, cfg, rank, world)
    if resume and not ckpt_path.exists():
        log(f"no checkpoint at {ckpt_path} to resume from: training from the start")
    if resume and ckpt_path.exists():
        model, optimizer, scheduler, history = _resume(ckpt_path, cfg, device, loader, world, rank)
        if rank == 0 and sync_summary(ckpt_path):
            log(f"rewrote {ckpt_path.with_suffix('.json').name} from {ckpt_path.name}")
        log(f"resumed from {ckpt_path} after epoch {len(history)}")
    else:
        kwargs = cfg.model_kwargs(data.in_channels, data.num_classes, data.x_train.shape[2:])
        model = build_model(kwargs, cfg.network()).to(device)
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg)
        history = []
    net = ddp.wrap(model) if ddp else model
    t_start = time.perf_counter() - sum(h["epoch_time_s"] for h in history)
    for epoch in range(len(history), cfg.epochs):
        t0 = time.perf_counter()
        refined = epoch in cfg.refine_at
        if refined:
            refine(model, optimizer=optimizer)
            net = ddp.wrap(model) if ddp else model  # the wrapper holds the old parameters
        lr = optimizer.param_groups[0]["lr"]
        bar = f"epoch {epoch + 1}/{cfg.epochs} K={_n_basis(model)}" if cfg.progress else None
        diverged = _Diverged(epoch, len(history), ckpt_path)
        try:
            entry = _train_epoch(
                net, loader, optimizer, device, ddp, bar if rank == 0 else None, diverged
            )
            if ddp:
                ddp.heartbeat(epoch)
        except RuntimeError as e:
            if ddp is None or isinstance(e, (DivergenceError, StalledError)):
                raise
            raise ddp.stalled(epoch, len(history), e) from e
        diverged.check(entry["train_loss"], model)
        scheduler.step()
        entry = {"epoch": epoch + 1, "lr": lr, **entry, **_scores(model, data, device)}
        entry.update(n_basis=_n_basis(model), n_steps=blocks_of(model)[0].n_steps)
        entry.update(refined=refined, epoch_time_s=time.perf_counter() - t0)
        history.append(entry)
        loader_states = ddp.gather(loader.generator.get_state()) if ddp else None
        if rank == 0:
            save_checkpoint(
                ckpt_path,
                model,
                optimizer,
                scheduler,
                loader,
                config=cfg,
                epoch=epoch,
                history=history,
                loader_states=loader_states,
            )
        log(_epoch_line(entry, cfg.epochs))
    result = {
        "history": history,
        "model": model,
        "checkpoint": str(ckpt_path),
        "wall_time_s": time.perf_counter() - t_start,
        "test_acc": history[-1]["test_acc"] if history else float("nan"),
        "rank": rank,
        "world_size": world,
    }
    if ddp:
        result.update(ddp.finish(model, log))
    return result


class _Diverged:
    """Stops an epoch's run at a non-finite loss or weight (every rank alike: the loss is
    summed over ranks and the weights are the same on all)."""

    def __init__(self, epoch: int, done: int, ckpt_path):
        self.epoch, self.done, self.ckpt_path = epoch, done, ckpt_path

    def check(self, loss: float, model: nn.Module) -> None:
        if not math.isfinite(loss):
            self.stop(f"the training loss is {loss}")
        bad = [
            n
            for n, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            self.stop(f"{len(bad)} weight tensors are not finite ({shown})")

    def stop(self, what: str):
        kept = (
            f"the last finite checkpoint, epoch {self.done}, is kept at {self.ckpt_path}"
            if self.done
            else "no epoch had finished: nothing was saved"
        )
        raise DivergenceError(
            f"training diverged in epoch {self.epoch + 1}: {what}; stopped, {kept} "
            "(a smaller --lr may help)"
        )


def _warn_small_classes(data: Dataset, log) -> None:
    counts = torch.bincount(data.y_train)
    fewest = int(counts[counts > 0].min())
    if fewest < MIN_PER_CLASS:
        log(
            f"warning: class {int((counts == fewest).nonzero()[0])} has only {fewest} training "
            f"images (fewer than {MIN_PER_CLASS}): the validation split leaves little to train on"
        )


def _loader(data: Dataset, cfg: TrainConfig, rank: int, world: int) -> Loader:
    """This rank's share of the training data, shuffled by its own generator: every rank
    gets the same number of samples (DDP needs the same number of batches)."""
    n = len(data.x_train) // world * world
    return Loader(
        data.x_train[rank:n:world],
        data.y_train[rank:n:world],
        cfg.batch_size,
        shuffle=True,
        augment=data.augment,
        seed=cfg.seed + rank,
    )


def _train_epoch(net, loader, optimizer, device, ddp, bar: str | None, diverged) -> dict:
    """One pass over ``loader``: ``{"train_loss", "train_acc"}`` (summed over ranks); a
    progress bar titled ``bar``, if given. One process stops at the first non-finite loss
    (``diverged``); several look at the epoch's, all alike."""
    net.train()
    tot_loss, tot_correct, seen = 0.0, 0, 0
    for xb, yb in _progress(loader, bar is not None, desc=bar, total=len(loader)):
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad(set_to_none=True)
        out = net(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if ddp is None and not math.isfinite(value):
            diverged.stop(f"the training loss is {value}")
        tot_loss += value * len(xb)
        tot_correct += (out.argmax(1) == yb).sum().item()
        seen += len(xb)
    if ddp:
        tot_loss, tot_correct, seen = ddp.sum(tot_loss, tot_correct, seen)
    return {"train_loss": tot_loss / seen, "train_acc": tot_correct / seen}


def _scores(model, data: Dataset, device) -> dict:
    """Loss and accuracy on the validation split (if held out) and on the test set."""
    out = {}
    if data.x_val is not None and len(data.x_val):
        out["val_loss"], out["val_acc"] = evaluate(model, data.x_val, data.y_val, device=device)
    out["test_loss"], out["test_acc"] = evaluate(model, data.x_test, data.y_test, device=device)
    return out


def _epoch_line(e: dict, epochs: int) -> str:
    val = f"val acc {e['val_acc']:.4f}  " if "val_acc" in e else ""
    return (
        f"epoch {e['epoch']:3d}/{epochs}  K={e['n_basis']:<3d} n_steps={e['n_steps']:<3d} "
        f"lr {e['lr']:.4f}  train loss {e['train_loss']:.4f} acc {e['train_acc']:.4f}  {val}"
        f"test loss {e['test_loss']:.4f} acc {e['test_acc']:.4f}  {e['epoch_time_s']:.1f}s"
        + ("  (refined)" if e["refined"] else "")
    )


def _resume(path, cfg: TrainConfig, device, loader: Loader, world: int, rank: int):
    """``(model, optimizer, scheduler, history)`` of the checkpoint at ``path``, with the
    RNG and ``loader`` states restored. Raises only :class:`CheckpointError`."""
    payload = load_checkpoint(path)
    check_finite(payload)
    saved = payload["meta"].get("train") or {}
    mine = cfg.to_json()
    differ = [k for k in RESUME_KEYS if saved.get(k, LEGACY.get(k)) != mine[k]]
    if differ:
        asked = ", ".join(
            f"{k}={saved.get(k, LEGACY.get(k))!r} (asked: {mine[k]!r})" for k in differ
        )
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with {asked}; a resumed run "
            "continues the saved one exactly, so these must be the same"
        )
    model = model_from_checkpoint(payload, device=device)
    history = payload["meta"].get("history", [])
    if len(history) != payload["meta"].get("epoch", -1) + 1:
        raise CheckpointError(f"cannot resume from {path}: its history does not match its epoch")
    try:
        optimizer = make_optimizer(model, cfg)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler = make_scheduler(optimizer, cfg)
        scheduler.load_state_dict(payload["scheduler"])
        rng = payload["rng"]
        loader_states = rng.get("loader_ranks") or [rng["loader"]]
        if len(loader_states) != world:
            raise CheckpointError(
                f"cannot resume from {path}: it was written by {len(loader_states)} "
                f"process(es), this run has {world}"
            )
        torch.set_rng_state(rng["torch"])
        loader.generator.set_state(loader_states[rank])
    except CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(
            f"cannot resume from {path}: its optimizer, scheduler or RNG states do not fit "
            f"this run: {type(e).__name__}: {e}"
        ) from e
    return model, optimizer, scheduler, history


def _silent(*args, **kwargs):
    pass
