"""Small-batch inference replayed from a captured CUDA graph: one launch for the whole
manifestation instead of every kernel's."""

from __future__ import annotations

import torch
from torch import nn

from ..block import ContinuousBlock


class GraphedInference:
    """Inference of a module replayed from a captured CUDA graph (see :func:`cuda_graph`)."""

    def __init__(
        self, module: nn.Module, example: torch.Tensor, warmup: int = 3, copy_output: bool = True
    ):
        self.module, self.copy_output = module, copy_output
        self.static_in = example.detach().clone()
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        # warm-up: allocations, cuDNN autotuning, contnet's per-manifestation caches
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                module(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_out = module(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.static_in
        if x.shape != s.shape or x.dtype != s.dtype or x.device != s.device:
            raise ValueError(
                f"x must match the captured input: shape {tuple(s.shape)}, {s.dtype}, {s.device}; got "
                f"{tuple(x.shape)}, {x.dtype}, {x.device} (capture again for another shape)"
            )
        s.copy_(x)
        self.graph.replay()
        return self.static_out.clone() if self.copy_output else self.static_out


def cuda_graph(
    module: nn.Module, example: torch.Tensor, *, warmup: int = 3, copy_output: bool = True
) -> GraphedInference:
    """Capture ``module``'s inference forward on inputs shaped like ``example`` in a CUDA
    graph; calling the result replays it (one launch instead of every kernel's).

    For small batches, where launches and Python dominate. The module should be in eval
    mode; its manifestation (``scheme``, ``n_steps``) and weights' storage are fixed at
    capture (capture again after changing them; weights updated in place are seen).
    ``copy_output=False`` returns the graph's own output buffer, overwritten by the next
    call. A block that steps to a tolerance (``rtol``) is refused: its steps, and the host
    reads that choose them, depend on the input.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    adaptive = [
        n or "(the module)"
        for n, m in module.named_modules()
        if isinstance(m, ContinuousBlock) and m.rtol is not None
    ]
    if adaptive:
        raise ValueError(
            f"cuda_graph captures fixed work, but block(s) {', '.join(adaptive)} "
            "step to a tolerance (rtol), whose steps depend on the input: set their rtol to "
            "None and a scheme and n_steps to capture"
        )
    if not isinstance(example, torch.Tensor) or example.device.type != "cuda":
        raise ValueError("cuda_graph needs an example input on a CUDA device")
    if module.training:
        raise ValueError("cuda_graph captures inference: call module.eval() first")
    return GraphedInference(module, example, warmup, copy_output)
