"""Conversion of a pre-activation residual stage into an equivalent ``ContinuousBlock``
(ResNet equivalence: ``x <- x + f_i(x)``, ``i < N``, is a ``piecewise_constant`` block
with ``K = N`` cells, ``euler``, ``n_steps = N``, the rate scaled by ``N``).

A conversion is exact and checked, or refused: every parameter, buffer and submodule of
each residual block must be one this module maps (or one that computes nothing, such as
``nn.Identity`` or an activation module), and after converting, the stage and the block
are run on a probe batch and must agree to rounding."""

from __future__ import annotations

import torch
from torch import nn

from ..block import ContinuousBlock
from ..nn import ConvUnit

__all__ = ["from_resnet"]

_NORMS = ("bn1", "norm1", "bn2", "norm2")
_SHORTCUTS = ("shortcut", "downsample")
# what a batch norm may hold: torch's, and timm's BatchNormAct2d (its act and drop)
_NORM_PARAMS = {"weight", "bias"}
_NORM_BUFFERS = {"running_mean", "running_var", "num_batches_tracked"}
_PROBE_SEED = 20240229


def _describe(module: nn.Module) -> str:
    return type(module).__name__


def _is_identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity) or (isinstance(m, nn.Sequential) and not len(m))


def _find(block, i, names, what):
    found = [(n, getattr(block, n)) for n in names if getattr(block, n, None) is not None]
    if not found:
        raise ValueError(
            f"stage[{i}] ({_describe(block)}) has no {what} (looked for {list(names)}); "
            "from_resnet takes pre-activation blocks x + conv2(relu(bn2(conv1(relu(bn1(x))))))"
        )
    return found[0]


def _check_norm(i, name, bn) -> None:
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
        raise ValueError(
            f"stage[{i}].{name} must be an nn.BatchNorm2d with running statistics, "
            f"got {_describe(bn)}"
        )
    extra = [n for n, _ in bn.named_parameters(recurse=False) if n not in _NORM_PARAMS]
    extra += [n for n, _ in bn.named_buffers(recurse=False) if n not in _NORM_BUFFERS]
    if extra:
        raise ValueError(f"stage[{i}].{name} holds {extra}, which from_resnet does not map")
    for child, m in bn.named_children():  # timm's BatchNormAct2d: act and drop
        if not (_is_identity(m) or (child == "act" and isinstance(m, nn.ReLU))):
            raise ValueError(
                f"stage[{i}].{name}.{child} is a {_describe(m)}; from_resnet maps a batch "
                "norm followed by relu only"
            )
    if bn.momentum is None:
        raise ValueError(
            f"stage[{i}].{name} has momentum=None (a cumulative average), which a "
            "converted block does not keep; give it a momentum"
        )


def _check_conv(i, name, conv, kernel_size) -> None:
    if type(conv) is not nn.Conv2d:
        raise ValueError(f"stage[{i}].{name} must be a plain nn.Conv2d, got {_describe(conv)}")
    k = conv.kernel_size
    if (
        conv.stride != (1, 1)
        or conv.groups != 1
        or conv.dilation != (1, 1)
        or conv.padding != (k[0] // 2, k[1] // 2)
        or conv.padding_mode != "zeros"
        or k[0] % 2 == 0
        or k[1] % 2 == 0
        or k != kernel_size
    ):
        raise ValueError(
            f"stage[{i}].{name} must be an odd same-size convolution (stride 1, padding k//2, "
            "no groups or dilation) with the kernel size of conv1"
        )


def _parts(block, i):
    """``(norm1, conv1, norm2, conv2)`` of a pre-activation block, after checking that
    it holds nothing else that computes: no parameter, buffer or submodule unmapped."""
    if type(block).__module__.startswith("torchvision"):
        raise ValueError(
            f"stage[{i}] is a torchvision {_describe(block)}, a post-activation block; "
            "from_resnet takes pre-activation blocks x + conv2(relu(bn2(conv1(relu(bn1(x))))))"
        )
    if not isinstance(block, nn.Module):
        raise TypeError(f"stage[{i}] must be an nn.Module, got {type(block).__name__}")
    n1, norm1 = _find(block, i, _NORMS[:2], "bn1/norm1")
    _, conv1 = _find(block, i, ("conv1",), "conv1")
    n2, norm2 = _find(block, i, _NORMS[2:], "bn2/norm2")
    _, conv2 = _find(block, i, ("conv2",), "conv2")
    mapped = {n1, "conv1", n2, "conv2"}
    for name, m in block.named_children():
        if name in mapped:
            continue
        if name in _SHORTCUTS and not _is_identity(m):
            raise ValueError(
                f"stage[{i}].{name} is not an identity shortcut ({_describe(m)}); "
                "from_resnet needs identity shortcuts"
            )
        if not (_is_identity(m) or isinstance(m, nn.ReLU)):
            raise ValueError(
                f"stage[{i}] ({_describe(block)}) has a submodule {name!r} ({_describe(m)}) "
                "that from_resnet does not map: a converted block would drop it"
            )
    own = [(n, "parameter", p) for n, p in block.named_parameters(recurse=False)]
    own += [(n, "buffer", b) for n, b in block.named_buffers(recurse=False)]
    if own:
        what = ", ".join(f"{kind} {n!r} of shape {tuple(t.shape)}" for n, kind, t in own)
        raise ValueError(
            f"stage[{i}] ({_describe(block)}) holds {what}, which from_resnet does not map "
            "(a layer scale, say): a converted block would drop it"
        )
    for name, bn in ((n1, norm1), (n2, norm2)):
        _check_norm(i, name, bn)
    for name, conv in (("conv1", conv1), ("conv2", conv2)):
        _check_conv(i, name, conv, conv1.kernel_size)
    return norm1, conv1, norm2, conv2


def _check_stage(parts) -> tuple[int, int]:
    """``(channels, hidden)`` of the stage; every block maps them alike."""
    n1, c1, _, _ = parts[0]
    channels, hidden = c1.in_channels, c1.out_channels
    for i, (a, b, c, d) in enumerate(parts):
        if (b.in_channels, b.out_channels, d.in_channels, d.out_channels) != (
            channels,
            hidden,
            hidden,
            channels,
        ):
            raise ValueError(
                f"stage[{i}] convolutions must map {channels} -> {hidden} -> {channels} "
                "channels like stage[0]"
            )
        if (a.num_features, c.num_features) != (channels, hidden):
            raise ValueError(
                f"stage[{i}] batch norms have {a.num_features} and {c.num_features} features; "
                f"a pre-activation block normalises its input ({channels}) and conv1's output "
                f"({hidden})"
            )
        if (a.eps, c.eps) != (n1.eps, n1.eps):
            raise ValueError(f"stage[{i}] batch norms must share eps={n1.eps} with stage[0]")
        if (a.momentum, c.momentum) != (n1.momentum, n1.momentum):
            raise ValueError(
                f"stage[{i}] batch norms must share momentum={n1.momentum} with stage[0]"
            )
    return channels, hidden


def _build(parts, channels, hidden) -> ContinuousBlock:
    n1, c1 = parts[0][:2]
    N = len(parts)
    w = c1.weight
    k = c1.kernel_size
    unit = ConvUnit(
        channels,
        hidden=hidden,
        n_basis=N,
        basis="piecewise_constant",
        act="relu",
        norm="batch",
        preact=True,
        kernel_size=k[0] if k[0] == k[1] else k,
        scale=float(N),
        bias=any(p.bias is not None for _, c, _, d in parts for p in (c, d)),
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        for i, (a, b, c, d) in enumerate(parts):
            for dst, src in ((unit.conv1, b), (unit.conv2, d)):
                dst.weight[i].copy_(src.weight)
                if dst.bias is not None:
                    dst.bias[i].copy_(src.bias if src.bias is not None else 0.0)
            for dst, src in ((unit.norm1, a), (unit.norm2, c)):
                dst.running_mean[i].copy_(src.running_mean)
                dst.running_var[i].copy_(src.running_var)
                dst.weight[i].copy_(src.weight if src.affine else 1.0)
                dst.bias[i].copy_(src.bias if src.affine else 0.0)
        for norm in (unit.norm1, unit.norm2):
            norm.eps, norm.momentum = n1.eps, n1.momentum
    return ContinuousBlock(unit, scheme="euler", n_steps=N)


def _tolerance(dtype: torch.dtype, n_blocks: int) -> float:
    """What rounding may make of ``n_blocks`` blocks, relative to ``1 + |state|``: both
    sides run the same convolutions and norms; the block's update rounds twice more (the
    rate scaled by N, the step by 1/N), and later blocks carry earlier differences on.
    Measured below one unit roundoff per block; 16 per block is allowed."""
    return 16 * n_blocks * torch.finfo(dtype).eps


@torch.no_grad()
def _probe(blocks, block: ContinuousBlock, parts) -> None:
    """Run the stage and the converted block on one probe batch in eval mode and raise
    unless every step's state agrees with the stage's to rounding, naming the first block
    that does not."""
    from ..integrate import odeint

    w = parts[0][1].weight
    if w.device.type == "meta":
        raise ValueError("stage is on the meta device: from_resnet cannot check it")
    modes = [(m, m.training) for b in (*blocks, block) for m in b.modules()]
    try:
        for b in (*blocks, block):
            b.eval()
        channels, size = parts[0][1].in_channels, max(8, 2 * max(parts[0][1].kernel_size) + 1)
        gen = torch.Generator(device=w.device).manual_seed(_PROBE_SEED)
        x = torch.randn(4, channels, size, size, generator=gen, device=w.device).to(w.dtype)
        N = len(blocks)
        path = odeint(block.unit, x, scheme="euler", n_steps=N, trajectory=True)
        state = x
        for i, b in enumerate(blocks):
            state = b(state)
            ref, got = state.double(), path[i + 1].double()
            err = (got - ref).abs().max().item()
            scale = ref.abs().max().item()
            if not err <= _tolerance(w.dtype, i + 1) * (1.0 + scale):
                raise ValueError(
                    f"stage[{i}] ({_describe(b)}) does not compute the pre-activation residual "
                    "x + conv2(relu(bn2(conv1(relu(bn1(x)))))) of its layers: on a probe batch "
                    f"(eval mode, {w.dtype}) the converted block differs from it by {err:.3g} "
                    f"after it (states of size {scale:.3g}). A post-activation block "
                    "(relu(bn2(conv2(relu(bn1(conv1(x))))) + x)) or a forward that does "
                    "something else cannot be converted"
                )
    finally:
        for m, mode in modes:
            m.training = mode


def from_resnet(stage) -> ContinuousBlock:
    """Convert a pre-activation residual stage into an equivalent ``ContinuousBlock``.

    ``stage``: an iterable (e.g. ``nn.Sequential``) of ``N`` residual blocks computing
    ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))`` with identity shortcuts (attributes
    ``bn1, conv1, bn2, conv2``, or timm's ``norm1, conv1, norm2, conv2``). Returns a
    ``piecewise_constant`` block with ``K = N`` cells, ``euler``, ``n_steps = N`` and the
    rate scaled by ``N``: block ``i`` becomes cell ``i``, so the output equals the stage's
    (batch norm in eval mode; in training mode the statistics are those of each cell).

    Checked, or refused with a ``ValueError`` naming the block and what it found: a block
    holding a parameter, buffer or submodule the conversion does not map (a layer scale,
    dropout, drop-path, squeeze-excitation) is refused, and the stage and the block are
    run on a probe batch (eval mode, the stage's dtype and device) and must agree to
    rounding, which refuses blocks whose forward computes something else (post-activation
    blocks). The stage is left as it was (training modes included).
    """
    try:
        blocks = list(stage)
    except TypeError:
        raise TypeError(
            f"stage must be an iterable of residual blocks, got {type(stage).__name__}"
        ) from None
    if not blocks:
        raise ValueError("stage must hold at least one residual block")
    parts = [_parts(b, i) for i, b in enumerate(blocks)]
    block = _build(parts, *_check_stage(parts))
    _probe(blocks, block, parts)
    block.train(getattr(stage, "training", blocks[0].training))
    return block
