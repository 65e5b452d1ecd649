"""The main job's workhorses: training with refinement in depth, checkpoints, evaluation of
manifestations, compression.

Checkpoints are a ``torch.save`` of plain data (state dicts, RNG states, a JSON metadata
string) written to a temporary file and renamed into place, and are read back with
``weights_only=True`` (no code is ever unpickled).
"""

from __future__ import annotations

import dataclasses
import json
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
from .block import ContinuousBlock
from .data import Dataset, Loader
from .layers import TimeConv2d
from .models import ContinuousNet, project, refine

__all__ = [
    "TrainConfig",
    "train",
    "evaluate",
    "build_model",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "CheckpointError",
    "blocks_of",
    "manifestation_table",
    "manifestation_drift",
    "fitted_order",
    "compress",
    "count_parameters",
]

CHECKPOINT_FORMAT = "contnet-checkpoint"
CHECKPOINT_VERSION = 1


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


def build_model(kwargs: dict) -> ContinuousNet:
    kw = dict(kwargs)
    return ContinuousNet(
        kw.pop("in_channels"),
        kw.pop("num_classes"),
        tuple(kw.pop("widths")),
        kw.pop("n_basis"),
        **kw,
    )


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
def blocks_of(model: nn.Module) -> list[ContinuousBlock]:
    """Every ContinuousBlock in ``model``."""
    return [m for m in model.modules() if isinstance(m, ContinuousBlock)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _n_basis(model: nn.Module) -> int:
    """The largest weight-basis size of the model's time-dependent convolutions."""
    return max((m.n_basis for m in model.modules() if isinstance(m, TimeConv2d)), default=0)


def model_state(model: nn.Module) -> dict:
    """What describes a model's current depth discretisation (metadata of checkpoints)."""
    blocks = blocks_of(model)
    units = [b.unit for b in blocks]
    return {
        "n_basis": [getattr(u, "n_basis", None) for u in units],
        "basis": [getattr(getattr(u, "basis", None), "family", None) for u in units],
        "scheme": [b.scheme if isinstance(b.scheme, str) else b.scheme.name for b in blocks],
        "n_steps": [b.n_steps for b in blocks],
    }


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


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device="cpu") -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat(
        [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )
    model.train(was)
    return out


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the install
        return iterable
    # disable=None: no bars when the output is not a terminal (logs stay readable)
    return tqdm(iterable, leave=False, dynamic_ncols=True, disable=None, **kw)


# ----------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, tampered with or mismatched."""


def _atomic_write(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    """Write a checkpoint atomically (temporary file, then rename): the previous file stays
    intact if anything fails. A human-readable ``.json`` of the metadata goes beside it."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
        raise ValueError(
            f"path must not end in .json (the metadata goes to the path with a .json suffix), got {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": getattr(model, "config", None),
        "state": model_state(model),
        "epoch": epoch,
        "train": config.to_json() if isinstance(config, TrainConfig) else config,
        "history": list(history),
        "torch": torch.__version__,
        **(extra or {}),
    }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "meta": json.dumps(meta),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "loader": loader.generator.get_state() if loader is not None else None,
            "loader_ranks": loader_states,
        },
    }
    _atomic_write(path, lambda p: torch.save(payload, p))
    _atomic_write(
        path.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=1) + "\n")
    )
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint with ``weights_only=True``; returns the payload with ``meta``
    parsed. Raises :class:`CheckpointError` naming the file and the problem."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely (truncated, corrupt, or holding code that "
            f"weights_only loading refuses): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a contnet checkpoint (no '{CHECKPOINT_FORMAT}' format tag)"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('version')}; this contnet reads version {CHECKPOINT_VERSION}"
        )
    try:
        payload["meta"] = json.loads(payload["meta"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable metadata: {e}") from e
    for key in ("model", "state"):
        if key not in payload["meta"]:
            raise CheckpointError(f"checkpoint {path} metadata lacks {key!r}")
    payload["path"] = str(path)  # for the errors of model_from_checkpoint
    return payload


def model_from_checkpoint(
    payload: dict, *, n_basis: int | None = None, device="cpu"
) -> ContinuousNet:
    """Rebuild the model of a checkpoint at the depth discretisation it was saved with and
    load its weights. With ``n_basis`` different from the saved one, the weights are
    refined (if ``n_basis`` is reached by refining) or projected (if smaller)."""
    meta, where = payload["meta"], f"checkpoint {payload.get('path', '')}".rstrip()
    kw = dict(meta["model"])
    state = meta["state"]
    # the weight basis it was saved with: refine/project (compress --save, or the API's
    # project onto another family) change it from the one the model was built with
    if len(set(state["basis"])) != 1 or len(set(state["n_basis"])) != 1:
        raise CheckpointError(
            f"{where} has stages of different weight bases ({state['basis']}, n_basis "
            f"{state['n_basis']}); a ContinuousNet has one for all its stages"
        )
    kw["basis"], saved_k = state["basis"][0], state["n_basis"][0]
    kw["n_basis"] = saved_k
    try:
        model = build_model(kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} describes a model that cannot be built: {e}") from e
    # the manifestation it was saved in (compress saves another scheme than it was built with)
    for block, n, scheme in zip(blocks_of(model), state["n_steps"], state["scheme"]):
        try:
            block.scheme, block.n_steps = scheme, n
        except ValueError as e:
            raise CheckpointError(f"{where}'s saved manifestation cannot be set: {e}") from e
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(
            f"{where} weights do not match its metadata (basis {kw['basis']}, n_basis {saved_k}): {detail}"
        ) from e
    if n_basis is not None and n_basis != saved_k:
        b = basis_lib.get(kw["basis"], saved_k)
        reachable = []
        while b.n_basis < n_basis:
            b = b.refined()
            reachable.append(b.n_basis)
        if reachable and reachable[-1] == n_basis:
            for _ in reachable:
                refine(model, steps=False)
        elif n_basis < saved_k:
            project(model, n_basis)
        else:
            raise CheckpointError(
                f"{where} has n_basis={saved_k} ({kw['basis']}); n_basis={n_basis} is neither reached by "
                f"refinement ({[saved_k] + reachable}) nor smaller (projection)"
            )
    return model.to(device)


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
    # every rank gets the same number of samples (DDP needs the same number of batches)
    n = len(dataset.x_train) // world * world
    loader = Loader(
        dataset.x_train[rank:n:world],
        dataset.y_train[rank:n:world],
        cfg.batch_size,
        shuffle=True,
        augment=dataset.augment,
        seed=cfg.seed + rank,
    )
    start, history = 0, []
    if resume and not ckpt_path.exists():
        log(f"no checkpoint at {ckpt_path} to resume from: training from the start")
    if resume and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path)
        saved = payload["meta"].get("train") or {}
        mine = cfg.to_json()
        differ = [k for k in RESUME_KEYS if saved.get(k) != mine[k]]
        if differ:
            asked = ", ".join(f"{k}={saved.get(k)!r} (asked: {mine[k]!r})" for k in differ)
            raise CheckpointError(
                f"cannot resume from {ckpt_path}: it was trained with {asked}; a resumed run "
                "continues the saved one exactly, so these must be the same"
            )
        model = model_from_checkpoint(payload, device=device)
        start, history = payload["meta"]["epoch"] + 1, payload["meta"]["history"]
        optimizer = make_optimizer(model, cfg)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler = make_scheduler(optimizer, cfg)
        scheduler.load_state_dict(payload["scheduler"])
        rng = payload["rng"]
        loader_states = rng.get("loader_ranks") or [rng["loader"]]
        if len(loader_states) != world:
            raise CheckpointError(
                f"cannot resume from {ckpt_path}: it was written by {len(loader_states)} process(es), this run has {world}"
            )
        torch.set_rng_state(rng["torch"])
        loader.generator.set_state(loader_states[rank])
        log(f"resumed from {ckpt_path} after epoch {start}")
    else:
        model = build_model(cfg.model_kwargs(dataset.in_channels, dataset.num_classes)).to(device)
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg)
    net = ddp.wrap(model) if ddp else model
    t_start = time.perf_counter() - sum(h["epoch_time_s"] for h in history)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        refined = epoch in cfg.refine_at
        if refined:
            refine(model, optimizer=optimizer)
            net = ddp.wrap(model) if ddp else model  # the wrapper holds the old parameters
        net.train()
        tot_loss, tot_correct, seen = 0.0, 0, 0
        desc = f"epoch {epoch + 1}/{cfg.epochs} K={_n_basis(model)}"
        for xb, yb in _progress(loader, cfg.progress and rank == 0, desc=desc, total=len(loader)):
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
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test, device=device)
        entry = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": tot_loss / seen,
            "train_acc": tot_correct / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "n_basis": _n_basis(model),
            "n_steps": blocks_of(model)[0].n_steps,
            "refined": refined,
            "epoch_time_s": time.perf_counter() - t0,
        }
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
        log(
            f"epoch {epoch + 1:3d}/{cfg.epochs}  K={entry['n_basis']:<3d} n_steps={entry['n_steps']:<3d} "
            f"lr {lr:.4f}  train loss {entry['train_loss']:.4f} acc {entry['train_acc']:.4f}  "
            f"test loss {test_loss:.4f} acc {test_acc:.4f}  {entry['epoch_time_s']:.1f}s"
            + ("  (refined)" if refined else "")
        )
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


def _silent(*args, **kwargs):
    pass


# ----------------------------------------------------------------------------- manifestations
def _set(blocks, scheme, n_steps):
    for b in blocks:
        b.scheme, b.n_steps = scheme, n_steps


def fitted_order(steps, errors) -> float:
    """Least-squares slope of ``log error`` against ``log h`` (``h = 1/steps``); NaN when
    fewer than two positive errors."""
    pts = [(math.log(1.0 / n), math.log(e)) for n, e in zip(steps, errors) if e > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def schemes_to_try(model: nn.Module) -> list:
    """The schemes to evaluate a trained model in: its own as its blocks hold it (a name,
    an LM-ResNet's ``lm`` too, or a ``ButcherTableau``), then euler, midpoint and rk4."""
    own = [b.scheme for b in blocks_of(model)]
    keyed = {(s if isinstance(s, str) else id(s)): s for s in own}
    for name in ("euler", "midpoint", "rk4"):
        keyed.setdefault(name, name)
    return list(keyed.values())


@torch.no_grad()
def manifestation_table(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    schemes,
    steps,
    reference=("rk4", 128),
    device="cpu",
):
    """Accuracy (if labels ``y`` are given) and output drift of ``model`` on ``x`` for every
    ``scheme x n_steps``, against the ``reference`` manifestation: drift is
    ``|logits - logits_ref| / |logits_ref|`` (Frobenius norms).

    Returns ``{"reference": ..., "rows": {scheme: {"drift": {n: v}, "accuracy": {n: v},
    "order": slope}}}``; ``order`` is fitted on step counts at or above the largest basis
    size in the model (where steps resolve every piece of ``theta``). Block settings are
    restored afterwards.
    """
    blocks = blocks_of(model)
    if not blocks:
        raise ValueError("model holds no ContinuousBlock")
    saved = [(b.scheme, b.n_steps) for b in blocks]
    try:
        _set(blocks, *reference)
        ref = predict(model, x, device=device)
        k_max = max(getattr(b.unit, "n_basis", 1) for b in blocks)
        rows = {}
        for scheme in schemes:
            drift, acc = {}, {}
            for n in steps:
                _set(blocks, scheme, n)
                out = predict(model, x, device=device)
                drift[n] = ((out - ref).norm() / ref.norm()).item()
                if y is not None:
                    acc[n] = (out.argmax(1) == y).float().mean().item()
            fit = [n for n in steps if n >= k_max] or list(steps)
            rows[scheme] = {
                "drift": drift,
                "accuracy": acc,
                "order": fitted_order(fit, [drift[n] for n in fit]),
            }
        return {"reference": list(reference), "rows": rows}
    finally:
        for b, (s, n) in zip(blocks, saved):
            b.scheme, b.n_steps = s, n


def manifestation_drift(model, x, schemes, steps, reference=("rk4", 64)):
    """Drift part of :func:`manifestation_table` as ``{scheme: {"drift": ..., "order": ...}}``."""
    table = manifestation_table(model, x, None, schemes, steps, reference)
    return {s: {"drift": r["drift"], "order": r["order"]} for s, r in table["rows"].items()}


# ----------------------------------------------------------------------------- compression
def measure_latency(model: nn.Module, x: torch.Tensor, min_run_time: float = 0.3) -> float:
    """Median seconds of one inference forward of ``model`` on ``x`` (no grad, eval mode)."""
    import torch.utils.benchmark as tb

    was = model.training
    model.eval()
    with torch.no_grad():
        model(x)
        t = tb.Timer(
            "model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads()
        )
        m = t.blocked_autorange(min_run_time=min_run_time)
    model.train(was)
    return m.median


def compress(
    model: ContinuousNet,
    dataset: Dataset,
    *,
    max_drop: float = 1.0,
    schemes=None,
    n_basis=None,
    steps=None,
    latency_batch: int = 256,
    device="cpu",
    log=print,
    min_run_time: float = 0.3,
) -> dict:
    """Evaluate cheaper versions of ``model``: the weights projected onto fewer basis nodes
    (``n_basis`` candidates, default halving down to the family's smallest) and/or other
    schemes (default :func:`schemes_to_try`) and fewer steps. Reports parameters, measured inference latency (batch
    ``latency_batch``) and test accuracy per candidate, and picks the fastest within
    ``max_drop`` accuracy points of the original (latencies within 5% of the fastest are
    ties, won by the fewest parameters). The model is left unchanged."""
    import copy

    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)):
        raise TypeError(f"max_drop must be a number of accuracy points, got {max_drop!r}")
    if not math.isfinite(max_drop):
        raise ValueError(f"max_drop must be a finite number of accuracy points, got {max_drop}")
    blocks = blocks_of(model)
    schemes = schemes or schemes_to_try(model)
    k0, fam = blocks[0].unit.n_basis, blocks[0].unit.basis.family
    n0, s0 = blocks[0].n_steps, blocks[0].scheme
    if n_basis is None:
        n_basis, k = [k0], k0
        while True:
            k = (k + 1) // 2 if fam == "fem_linear" else k // 2
            try:
                basis_lib.get(fam, k)
            except ValueError:
                break
            if k >= n_basis[-1]:
                break
            n_basis.append(k)
    if steps is None:
        steps = sorted({max(1, n0 // d) for d in (1, 2, 4, 8)}, reverse=True)
    xb = dataset.x_test[:latency_batch].to(device)
    _, base_acc = evaluate(model, dataset.x_test, dataset.y_test, device=device)
    base_latency = measure_latency(model, xb, min_run_time)
    candidates = []
    for k in n_basis:
        m = copy.deepcopy(model)
        if k != k0:
            project(m, k)
        for scheme in schemes:
            tableau = schemes_lib.get(scheme)
            for n in steps:
                _set(blocks_of(m), scheme, n)
                _, acc = evaluate(m, dataset.x_test, dataset.y_test, device=device)
                cand = {
                    "n_basis": k,
                    "scheme": tableau.name,
                    "n_steps": n,
                    "rate_evals": tableau.stages * n * len(blocks),
                    "parameters": count_parameters(m),
                    "accuracy": acc,
                    "drop_points": 100 * (base_acc - acc),
                    "latency_ms": measure_latency(m, xb, min_run_time) * 1e3,
                }
                candidates.append(cand)
                log(
                    f"  K={k:<3d} {tableau.name:<9s} n_steps={n:<3d} params {cand['parameters']:>8,d}  "
                    f"acc {acc:.4f}  latency {cand['latency_ms']:.2f} ms"
                )
    ok = [c for c in candidates if c["drop_points"] <= max_drop]
    choice = None
    if ok:
        # the fastest; latencies within 5% of it count as ties (timing noise), which the
        # smaller model wins
        fastest = min(c["latency_ms"] for c in ok)
        ties = [c for c in ok if c["latency_ms"] <= 1.05 * fastest]
        choice = min(ties, key=lambda c: (c["parameters"], c["latency_ms"]))
    return {
        "original": {
            "n_basis": k0,
            "scheme": s0 if isinstance(s0, str) else s0.name,
            "n_steps": n0,
            "parameters": count_parameters(model),
            "accuracy": base_acc,
            "latency_ms": base_latency * 1e3,
        },
        "max_drop_points": max_drop,
        "latency_batch": len(xb),
        "candidates": candidates,
        "choice": choice,
    }
