"""Data-parallel training under ``torchrun``: the process group and what the loop asks of
it."""

from __future__ import annotations

import datetime
import os
import time

import torch
from torch import nn


class StalledError(RuntimeError):
    """A data-parallel run stopped because another process stalled or died."""


class Distributed:
    """The process group of a ``torchrun`` launch (``WORLD_SIZE > 1`` in the environment):
    gloo on the CPU, NCCL on GPUs. Each rank trains on its share of the data; gradients
    are averaged by ``DistributedDataParallel``, which also keeps batch-norm statistics in
    step (rank 0's are broadcast every forward)."""

    def __init__(self, device: str, timeout: float = 600.0):
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
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
            except (RuntimeError, dist.DistError) as e:
                raise StalledError(
                    f"data parallel: the processes did not all start within {timeout:g} s "
                    f"(--dist-timeout): {str(e).splitlines()[0]}; nothing was trained"
                ) from e
        self.timeout = timeout
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.device = (
            torch.device(f"cuda:{self.local_rank}") if backend == "nccl" else torch.device(device)
        )
        if backend == "nccl":
            torch.cuda.set_device(self.device)

    @staticmethod
    def from_env(device: str, timeout: float = 600.0):
        """The process group of a ``torchrun`` launch, or None for one process. Every
        collective waits at most ``timeout`` seconds for the other processes."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return Distributed(device, timeout)
        return None

    def stalled(self, epoch: int, done: int, error: Exception) -> StalledError:
        """The error to stop with when a collective failed (a process stalled past the
        timeout, or died): which processes do not answer, if they can be told, and that
        the last checkpoint is intact."""
        who = ""
        try:  # ask every process to check in, briefly: the error names those that do not
            if self.dist.get_backend() == "gloo":
                self.dist.monitored_barrier(timeout=datetime.timedelta(seconds=5))
        except RuntimeError as e:
            who = f" ({str(e).splitlines()[0]})"
        kept = f"epoch {done}" if done else "none yet"
        return StalledError(
            f"data parallel: process {self.rank} stopped in epoch {epoch + 1}: the others did "
            f"not answer within {self.timeout:g} s (--dist-timeout){who}: "
            f"{str(error).splitlines()[0]}. The last checkpoint ({kept}) is intact: relaunch "
            "with --resume"
        )

    def heartbeat(self, epoch: int) -> None:
        """At an epoch's end, every process checks in: a process that does not within the
        timeout (stalled, killed) stops the others with a message naming it (gloo's
        monitored barrier), rather than leaving them waiting."""
        try:
            if self.dist.get_backend() == "gloo":
                timeout = datetime.timedelta(seconds=self.timeout)
                self.dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
            else:
                self.dist.barrier()
        except RuntimeError as e:
            raise StalledError(
                f"data parallel: after epoch {epoch + 1}, the other processes did not answer "
                f"within {self.timeout:g} s (--dist-timeout): {str(e).splitlines()[0]}. The "
                "last checkpoint is intact: relaunch with --resume"
            ) from e

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

    def finish(self, model: nn.Module, log=print) -> dict:
        """At the end of training: every rank's buffers made rank 0's, the largest
        difference between ranks of the parameters and buffers (``weight_spread``,
        ``buffer_spread``: 0 when the ranks stayed in step) logged and returned, and the
        process group left."""
        self.sync_buffers(model)
        spread = {
            "weight_spread": self.spread(model.parameters()),
            "buffer_spread": self.spread(model.buffers()),
        }
        log(
            f"data parallel over {self.world_size} processes; largest difference between ranks: "
            f"parameters {spread['weight_spread']:.3g}, buffers {spread['buffer_spread']:.3g}"
        )
        self.close()
        return spread

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
