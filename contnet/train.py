"""The main job's training: its configuration, the loop with refinement in depth,
resumable from checkpoints, data parallel under ``torchrun``.

The pieces it is built from have modules of their own and are re-exported here:
checkpoints (:mod:`contnet.checkpoint`), manifestations (:mod:`contnet.manifestation`),
compression (:mod:`contnet.compression`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import basis as basis_lib
from . import schemes as schemes_lib
from .block import blocks_of
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    model_state,
    save_checkpoint,
)
from .compression import compress, measure_latency
from .data import Dataset, Loader
from .layers import TimeConv2d
from .manifestation import (
    fitted_order,
    manifestation_drift,
    manifestation_table,
    predict,
    schemes_to_try,
)
from .models import ContinuousNet, refine

__all__ = [
    "TrainConfig",
    "train",
    "evaluate",
    "build_model",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "model_state",
    "CheckpointError",
    "blocks_of",
    "manifestation_table",
    "manifestation_drift",
    "fitted_order",
    "predict",
    "schemes_to_try",
    "compress",
    "measure_latency",
    "count_parameters",
]


# ----------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint)."""

    data: str = "digits"
    data_dir: str | None = None
    widths: tuple[int, ...] = (16, 32, 64)
    basis: str = "piecewise_constant"
    n_basis: int = 1
    scheme: str = "rk4"
    n_steps: int | None = None
    act: str = "relu"
    norm: str | None = "batch"
    preact: bool = True
    backprop: str = "direct"
    epochs: int = 18
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    refine_at: tuple[int, ...] = ()
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.refine_at = tuple(sorted(int(e) for e in self.refine_at))
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.refine_at and self.epochs < 2:
            raise ValueError(
                f"refine_at needs epochs >= 2 (a refinement starts an epoch after the first), "
                f"got epochs={self.epochs} and refine_at={list(self.refine_at)}"
            )
        if any(e <= 0 or e >= self.epochs for e in self.refine_at):
            raise ValueError(
                f"refine_at epochs must lie in 1..{self.epochs - 1}, got {list(self.refine_at)}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v}")
        if not (math.isfinite(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; expected one of {list(SCHEDULES)}"
            )
        basis_lib.get(self.basis, self.n_basis)  # validates the pair
        schemes_lib.get(self.scheme)

    def model_kwargs(self, in_channels: int, num_classes: int) -> dict:
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "widths": list(self.widths),
            "n_basis": self.n_basis,
            "basis": self.basis,
            "scheme": self.scheme,
            "n_steps": self.n_steps,
            "act": self.act,
            "norm": self.norm,
            "preact": self.preact,
            "backprop": self.backprop,
        }

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"], d["refine_at"] = list(self.widths), list(self.refine_at)
        return d


SCHEDULES = ("cosine", "step", "constant")
# what a resumed run must share with the saved one (all but where the data lie, the device,
# progress bars and free-form notes): the rest decides the weights' trajectory
RESUME_KEYS = tuple(
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name not in ("data_dir", "device", "progress", "extra")
)


# what a resumed run reads for a setting an older checkpoint does not record
LEGACY = {"val_fraction": 0.0}


def build_model(kwargs: dict) -> ContinuousNet:
    return ContinuousNet.from_config(kwargs)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    if cfg.schedule == "step":
        marks = [max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(opt, marks, 0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


# ----------------------------------------------------------------------------- helpers
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _n_basis(model: nn.Module) -> int:
    """The largest weight-basis size of the model's time-dependent convolutions."""
    return max((m.n_basis for m in model.modules() if isinstance(m, TimeConv2d)), default=0)


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


# ----------------------------------------------------------------------------- training
class Distributed:
    """The process group of a ``torchrun`` launch (``WORLD_SIZE > 1`` in the environment):
    gloo on the CPU, NCCL on GPUs. Each rank trains on its share of the data; gradients
    are averaged by ``DistributedDataParallel``, which also keeps batch-norm statistics in
    step (rank 0's are broadcast every forward)."""

    def __init__(self, device: str):
        import torch.distributed as dist

        self.dist = dist
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            # NCCL takes one GPU per process: two ranks on one device fail or hang inside it
            local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
            gpus = torch.cuda.device_count()
            if local_rank >= gpus:
                raise ValueError(
                    f"--device {device} with NCCL needs one GPU per process: local rank "
                    f"{local_rank} but {gpus} GPU(s) visible; start at most {gpus} processes "
                    "per node, or train with --device cpu (gloo)"
                )
        if not dist.is_initialized():
            dist.init_process_group(backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = (
            torch.device(f"cuda:{self.local_rank}") if backend == "nccl" else torch.device(device)
        )
        if backend == "nccl":
            torch.cuda.set_device(self.device)

    @staticmethod
    def from_env(device: str):
        return Distributed(device) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def spread(self, tensors) -> float:
        """Largest difference of any element of ``tensors`` between ranks (0: in step)."""
        tensors = [t.detach().double().flatten() for t in tensors if t.is_floating_point()]
        if not tensors:
            return 0.0
        flat = torch.cat(tensors)
        hi, lo = flat.clone(), flat.clone()
        self.dist.all_reduce(hi, op=self.dist.ReduceOp.MAX)
        self.dist.all_reduce(lo, op=self.dist.ReduceOp.MIN)
        return (hi - lo).abs().max().item()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers everywhere (what DDP does at the start of every forward: after
        the last one, each rank's batch-norm statistics hold its own last batch)."""
        for b in model.buffers():
            self.dist.broadcast(b, 0)

    def close(self, timeout: float = 5.0):
        """Leave the process group once every rank is here. A collective returns before the
        backend's worker thread has dropped its references to the tensors it moved, and a
        worker dropping a tensor that Python also holds takes the interpreter lock: one
        still doing so when the interpreter shuts down aborts the process. So the last
        collective runs on a tensor of this call, and the process waits (lock released)
        until the worker has let go of it, ``timeout`` seconds at most."""
        t = torch.zeros(1, device=self.device)
        self.dist.all_reduce(t)  # every rank has arrived
        deadline = time.monotonic() + timeout
        while t._use_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        self.dist.destroy_process_group()


def train(cfg: TrainConfig, out_dir, dataset: Dataset, *, resume: bool = False, log=print) -> dict:
    """Train a ContinuousNet on ``dataset``; checkpoint to ``out_dir/checkpoint.pt`` after
    every epoch. At the start of each epoch in ``cfg.refine_at`` the model is refined in
    depth (``K`` and ``n_steps`` double) and the optimiser state is mapped the same way.
    A stratified ``cfg.val_fraction`` of the training images is held out (see
    :meth:`contnet.data.Dataset.with_validation`): it is not trained on, its accuracy is
    recorded every epoch, and compression chooses on it.

    ``resume``: continue from ``out_dir/checkpoint.pt`` (bitwise the same as an
    uninterrupted run on the same machine). Under ``torchrun`` with several processes the
    run is data parallel (see :class:`Distributed`): rank 0 logs and writes checkpoints;
    after a refinement the DDP wrapper is built anew. Returns ``{"history", "model", ...}``.
    """
    out_dir = pathlib.Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    ddp = Distributed.from_env(cfg.device)
    rank, world = (ddp.rank, ddp.world_size) if ddp else (0, 1)
    device = ddp.device if ddp else torch.device(cfg.device)
    if rank != 0:
        log = _silent
    torch.manual_seed(cfg.seed)
    data = dataset.with_validation(cfg.val_fraction)
    # every rank gets the same number of samples (DDP needs the same number of batches)
    n = len(data.x_train) // world * world
    loader = Loader(
        data.x_train[rank:n:world],
        data.y_train[rank:n:world],
        cfg.batch_size,
        shuffle=True,
        augment=data.augment,
        seed=cfg.seed + rank,
    )
    if resume and not ckpt_path.exists():
        log(f"no checkpoint at {ckpt_path} to resume from: training from the start")
    if resume and ckpt_path.exists():
        model, optimizer, scheduler, history = _resume(ckpt_path, cfg, device, loader, world, rank)
        log(f"resumed from {ckpt_path} after epoch {len(history)}")
    else:
        model = build_model(cfg.model_kwargs(data.in_channels, data.num_classes)).to(device)
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
        bar = (
            f"epoch {epoch + 1}/{cfg.epochs} K={_n_basis(model)}"
            if cfg.progress and not rank
            else None
        )
        entry = _train_epoch(net, loader, optimizer, device, ddp, bar)
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
        ddp.sync_buffers(model)
        result["weight_spread"] = ddp.spread(model.parameters())
        result["buffer_spread"] = ddp.spread(model.buffers())
        log(
            f"data parallel over {world} processes; largest difference between ranks: parameters "
            f"{result['weight_spread']:.3g}, buffers {result['buffer_spread']:.3g}"
        )
        ddp.close()
    return result


def _train_epoch(net, loader, optimizer, device, ddp, bar: str | None) -> dict:
    """One pass over ``loader``: ``{"train_loss", "train_acc"}`` (summed over ranks); a
    progress bar titled ``bar``, if given."""
    net.train()
    tot_loss, tot_correct, seen = 0.0, 0, 0
    for xb, yb in _progress(loader, bar is not None, desc=bar, total=len(loader)):
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad(set_to_none=True)
        out = net(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        optimizer.step()
        tot_loss += loss.item() * len(xb)
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
