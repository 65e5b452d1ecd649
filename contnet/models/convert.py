"""Conversion of a pre-activation residual stage (basic or bottleneck blocks) into an
equivalent ``ContinuousBlock`` (ResNet equivalence: ``x <- x + f_i(x)``, ``i < N``, is a ``piecewise_constant`` block
with ``K = N`` cells, ``euler``, ``n_steps = N``, the rate scaled by ``N``).

A conversion is exact and checked, or refused: every parameter, buffer and submodule of
each residual block must be one this module maps (or one that computes nothing, such as
``nn.Identity`` or an activation module), and after converting, the stage and the block
are run on a probe batch and must agree to rounding."""

from __future__ import annotations

import torch
from torch import nn

from ..block import ContinuousBlock, StochasticDepth
from ..nn import BottleneckUnit, ConvUnit

__all__ = ["from_resnet"]

#: the (norm, conv) pairs of each kind of block, the norms by their torch and timm names
_BASIC = ((("bn1", "norm1"), "conv1"), (("bn2", "norm2"), "conv2"))
_BOTTLENECK = (*_BASIC, (("bn3", "norm3"), "conv3"))
_FORMULA = {
    2: "x + conv2(relu(bn2(conv1(relu(bn1(x))))))",
    3: "x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))",
}
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
            f"from_resnet takes pre-activation blocks {_FORMULA[2]} or {_FORMULA[3]}"
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


def _check_conv(i, name, conv, kernel_size, groups) -> None:
    if type(conv) is not nn.Conv2d:
        raise ValueError(f"stage[{i}].{name} must be a plain nn.Conv2d, got {_describe(conv)}")
    k = conv.kernel_size
    if (
        conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or conv.padding != (k[0] // 2, k[1] // 2)
        or conv.padding_mode != "zeros"
        or k[0] % 2 == 0
        or k[1] % 2 == 0
        or k != kernel_size
        or conv.groups != groups
    ):
        raise ValueError(
            f"stage[{i}].{name} must be a same-size convolution (stride 1, padding k//2, no "
            f"dilation) of kernel size {kernel_size} and groups={groups}, got kernel size "
            f"{k}, stride {conv.stride}, padding {conv.padding}, dilation {conv.dilation}, "
            f"groups={conv.groups}"
        )


def _drop_rate(m, i) -> float | None:
    """The drop probability of a timm ``DropPath`` (per sample, kept updates rescaled),
    0 for an identity, None for anything else; a ``DropPath`` that does not rescale is
    refused (its expected update is not the block's)."""
    if _is_identity(m):
        return 0.0
    p, rescales = getattr(m, "drop_prob", None), getattr(m, "scale_by_keep", None)
    if type(m).__name__ != "DropPath" or not isinstance(p, (int, float)) or rescales is None:
        return None
    if not rescales and p > 0:
        raise ValueError(
            f"stage[{i}].drop_path has scale_by_keep=False: its kept updates are not "
            "rescaled, which a block's stochastic depth does (expected update unchanged)"
        )
    return float(p)


def _check_children(block, i, mapped) -> None:
    """Nothing but the mapped layers, identity shortcuts and modules that compute nothing
    (identities, relu): anything else a converted block would drop."""
    for name, m in block.named_children():
        if name in mapped:
            continue
        if name == "drop_path" and _drop_rate(m, i) is not None:
            continue  # drop-path: the block's stochastic depth (see from_resnet)
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


def _parts(block, i) -> list[tuple[nn.BatchNorm2d, nn.Conv2d]]:
    """``[(norm_j, conv_j)]`` of a pre-activation block (basic: 2 pairs; bottleneck, a
    block with a ``conv3``: 3), after checking that it holds nothing else that computes:
    no parameter, buffer or submodule unmapped."""
    if not isinstance(block, nn.Module):
        raise TypeError(f"stage[{i}] must be an nn.Module, got {type(block).__name__}")
    if type(block).__module__.startswith("torchvision"):
        raise ValueError(
            f"stage[{i}] is a torchvision {_describe(block)}, a post-activation block; "
            f"from_resnet takes pre-activation blocks {_FORMULA[2]} or {_FORMULA[3]}"
        )
    kind = _BOTTLENECK if getattr(block, "conv3", None) is not None else _BASIC
    pairs, mapped = [], set()
    for norms, conv_name in kind:
        n, norm = _find(block, i, norms, "/".join(norms))
        _, conv = _find(block, i, (conv_name,), conv_name)
        pairs.append((n, norm, conv_name, conv))
        mapped |= {n, conv_name}
    _check_children(block, i, mapped)
    for n, norm, _, _ in pairs:
        _check_norm(i, n, norm)
    kernel = pairs[0][3].kernel_size
    for j, (_, _, name, conv) in enumerate(pairs):
        if kind is _BOTTLENECK:  # 1x1, 3x3 (grouped or not), 1x1
            _check_conv(i, name, conv, (3, 3) if j == 1 else (1, 1), conv.groups if j == 1 else 1)
        else:
            _check_conv(i, name, conv, kernel, 1)
    return [(norm, conv) for _, norm, _, conv in pairs]


def _check_stage(parts) -> None:
    """Every block maps its channels as stage[0] does, ``C -> ... -> C``, each norm
    normalising its conv's input, with stage[0]'s eps and momentum."""
    first = [(c.in_channels, c.out_channels, c.groups) for _, c in parts[0]]
    n1 = parts[0][0][0]
    channels = first[0][0]
    chain = [channels] + [out for _, out, _ in first]
    if chain[-1] != channels or any(a != b for (_, a, _), (b, _, _) in zip(first, first[1:])):
        raise ValueError(
            f"stage[0] convolutions must map {channels} channels back to {channels} "
            f"(they map {' -> '.join(map(str, chain))})"
        )
    for i, pairs in enumerate(parts):
        got = [(c.in_channels, c.out_channels, c.groups) for _, c in pairs]
        if len(got) != len(first) or got != first:
            raise ValueError(
                f"stage[{i}] convolutions must map channels as stage[0] does "
                f"({' -> '.join(map(str, chain))}, groups {[g for *_, g in first]})"
            )
        for j, (norm, conv) in enumerate(pairs):
            if norm.num_features != conv.in_channels:
                raise ValueError(
                    f"stage[{i}] batch norm {j + 1} has {norm.num_features} features; a "
                    f"pre-activation block normalises conv{j + 1}'s input ({conv.in_channels})"
                )
            if (norm.eps, norm.momentum) != (n1.eps, n1.momentum):
                raise ValueError(
                    f"stage[{i}] batch norms must share eps={n1.eps} and "
                    f"momentum={n1.momentum} with stage[0]"
                )


def _unit(parts):
    """The unit the blocks become: a :class:`ConvUnit` or a :class:`BottleneckUnit` with
    one cell per block, the rate scaled by the number of blocks."""
    convs = [c for _, c in parts[0]]
    w, N = convs[0].weight, len(parts)
    common = {
        "n_basis": N,
        "basis": "piecewise_constant",
        "act": "relu",
        "norm": "batch",
        "preact": True,
        "scale": float(N),
        "bias": any(c.bias is not None for pairs in parts for _, c in pairs),
        "device": w.device,
        "dtype": w.dtype,
    }
    if len(convs) == 3:
        return BottleneckUnit(
            convs[0].in_channels, bottleneck=convs[0].out_channels, groups=convs[1].groups, **common
        )
    k = convs[0].kernel_size
    kernel_size = k[0] if k[0] == k[1] else k
    return ConvUnit(
        convs[0].in_channels, hidden=convs[0].out_channels, kernel_size=kernel_size, **common
    )


def _build(parts) -> ContinuousBlock:
    unit = _unit(parts)
    n1 = parts[0][0][0]
    with torch.no_grad():
        for i, pairs in enumerate(parts):
            for j, (src_norm, src_conv) in enumerate(pairs, start=1):
                conv, norm = getattr(unit, f"conv{j}"), getattr(unit, f"norm{j}")
                conv.weight[i].copy_(src_conv.weight)
                if conv.bias is not None:
                    conv.bias[i].copy_(src_conv.bias if src_conv.bias is not None else 0.0)
                norm.running_mean[i].copy_(src_norm.running_mean)
                norm.running_var[i].copy_(src_norm.running_var)
                norm.weight[i].copy_(src_norm.weight if src_norm.affine else 1.0)
                norm.bias[i].copy_(src_norm.bias if src_norm.affine else 0.0)
        for j in range(1, len(parts[0]) + 1):
            norm = getattr(unit, f"norm{j}")
            norm.eps, norm.momentum = n1.eps, n1.momentum
    return ContinuousBlock(unit, scheme="euler", n_steps=len(parts))


def first_disagreement(blocks, apply, x, path):
    """``(i, err, scale)`` of the first block after which the stage (``apply(block, state)``
    for each block in turn from ``x``) and ``path`` (the converted block's states, ``x``
    first) disagree beyond rounding (:func:`_tolerance`), or None."""
    state = x
    for i, b in enumerate(blocks):
        state = apply(b, state)
        ref, got = state.double(), path[i + 1].double()
        err = (got - ref).abs().max().item()
        scale = ref.abs().max().item()
        if not err <= _tolerance(x.dtype, i + 1) * (1.0 + scale):
            return i, err, scale
    return None


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

    conv1 = parts[0][0][1]
    w = conv1.weight
    if w.device.type == "meta":
        raise ValueError("stage is on the meta device: from_resnet cannot check it")
    modes = [(m, m.training) for b in (*blocks, block) for m in b.modules()]
    try:
        for b in (*blocks, block):
            b.eval()
        channels, size = conv1.in_channels, max(8, 2 * max(conv1.kernel_size) + 1)
        gen = torch.Generator(device=w.device).manual_seed(_PROBE_SEED)
        x = torch.randn(4, channels, size, size, generator=gen, device=w.device).to(w.dtype)
        N = len(blocks)
        path = odeint(block.unit, x, scheme="euler", n_steps=N, trajectory=True)
        found = first_disagreement(blocks, lambda b, state: b(state), x, path)
        if found is not None:
            i, err, scale = found
            raise ValueError(
                f"stage[{i}] ({_describe(blocks[i])}) does not compute the pre-activation "
                f"residual {_FORMULA[len(parts[i])]} of its layers: on a probe batch "
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

    ``stage``: an iterable (e.g. ``nn.Sequential``) of ``N`` residual blocks with identity
    shortcuts, either basic, ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))`` (attributes
    ``bn1, conv1, bn2, conv2``, or timm's ``norm1, conv1, norm2, conv2``), which become a
    :class:`ConvUnit`, or bottleneck, ``x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))``
    with 1x1, 3x3 (grouped or not) and 1x1 convolutions (also ``norm3, conv3``: timm's
    ``PreActBottleneck`` with plain convolutions and ``BatchNormAct2d``), which become a
    :class:`BottleneckUnit`. Returns a ``piecewise_constant`` block with ``K = N`` cells, ``euler``, ``n_steps = N`` and the
    rate scaled by ``N``: block ``i`` becomes cell ``i``, so the output equals the stage's
    (batch norm in eval mode; in training mode the statistics are those of each cell).

    A block's timm ``DropPath`` (``drop_path``, per sample, kept updates rescaled) becomes
    the block's stochastic depth on its cell (schedule ``cells``, ``row``): the same drop
    probability for that block's update, in training; nothing in eval.

    Checked, or refused with a ``ValueError`` naming the block and what it found: a block
    holding a parameter, buffer or submodule the conversion does not map (a layer scale,
    dropout, squeeze-excitation, a drop-path that does not rescale) is refused, and the stage and the block are
    run on a probe batch (eval mode, the stage's dtype and device) and must agree to
    rounding, which refuses blocks whose forward computes something else (post-activation
    blocks). The block takes the training mode of the blocks (and its norms that of
    theirs); the stage is left as it was, statistics and modes included.
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
    _check_stage(parts)
    modes = _modes(blocks, parts)
    block = _build(parts)
    rates = [_drop_rate(getattr(b, "drop_path", None), i) for i, b in enumerate(blocks)]
    if any(rates):  # timm's drop-path, per sample, block i's on cell i
        block.stochastic_depth = StochasticDepth(mode="row", schedule="cells", cells=rates)
    _probe(blocks, block, parts)
    block.train(modes[0])
    for j, mode in enumerate(modes[1:], start=1):
        getattr(block.unit, f"norm{j}").train(mode)
    return block


def _modes(blocks, parts) -> list[bool]:
    """The training mode the converted block takes, then each of its norms': those of the
    blocks it is made from (not of a container around them: a slice of a ``Sequential`` is
    a new one, in training mode). Blocks or norms in different modes are refused: one
    block cannot hold them."""
    modes = [[b.training for b in blocks]]
    modes += [[pairs[j][0].training for pairs in parts] for j in range(len(parts[0]))]
    for j, column in enumerate(modes):
        if len(set(column)) > 1:
            what = "blocks" if j == 0 else f"batch norms {j}"
            raise ValueError(
                f"the stage's {what} are in different modes (training: {column}); a converted "
                "block has one: put them in one mode first (stage.train() or stage.eval())"
            )
    return [column[0] for column in modes]
