"""What a block checks of its arguments before a step is recomputed in backward: a unit
whose state a recomputed step would change again, and the keyword tensors that
``checkpoint``/``adjoint`` must differentiate."""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from ..nn import recompute_hazards

__all__ = ["check_replayable", "keyword_tensors"]


def check_replayable(unit, backprop: str) -> None:
    """Refuse a unit whose state a step recomputed in backward would change again
    (:func:`contnet.nn.recompute_hazards`): its gradients would not be the forward's."""
    found = recompute_hazards(unit)
    if found:
        raise ValueError(
            f"backprop={backprop!r} recomputes each step in backward, but {', '.join(found)} "
            "updates its state at every call in training mode, so the recomputed steps "
            "would use other weights than the forward pass did: use backprop='direct', or "
            "put those modules in eval mode"
        )


def keyword_tensors(kwargs, params) -> list:
    """The tensors among the keyword arguments (at any depth of lists, tuples and dicts)
    that need a gradient, for ``checkpoint``/``adjoint`` to differentiate (a conditioning
    input, a cross-attention memory). One computed from a tensor of ``params`` (the unit's
    own weights) is refused: its gradient would reach that tensor twice, once through the
    step and once through its own history."""
    for name, value in kwargs.items():
        for leaf in tree_leaves(value):
            if not isinstance(leaf, torch.Tensor) and _hides_grad(leaf):
                raise ValueError(
                    f"keyword argument {name!r} holds tensors that need a gradient inside a "
                    f"{type(leaf).__name__}, which backprop='checkpoint'/'adjoint' cannot see "
                    "to differentiate: pass them as tensors (alone, or in tuples, lists or "
                    "dicts), or use backprop='direct'"
                )
    leaves = [t for t in tree_leaves(kwargs) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not leaves:
        return []
    listed = {id(p) for p in params}
    out = {id(t): t for t in leaves if id(t) not in listed}
    differentiated = [*params, *out.values()]
    for name, t in _named_leaves(kwargs):
        if id(t) in out and _reaches(t, [p for p in differentiated if p is not t]):
            raise ValueError(
                f"keyword argument {name!r} is computed from another tensor that "
                "backprop='checkpoint'/'adjoint' differentiate (a parameter of the unit, or "
                "another keyword argument), so its gradient would count twice: pass the "
                "tensors it is computed from, or it detached, or use backprop='direct'"
            )
    return list(out.values())


def _hides_grad(obj, depth: int = 3, seen=None) -> bool:
    """Whether an object that is not a tensor (a dataclass, a module, any object with
    attributes) holds, within ``depth`` levels of its attributes and containers, a tensor
    that needs a gradient."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad
    if depth == 0 or id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)):
        return False
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = list(obj)
    else:
        items = list(getattr(obj, "__dict__", {}).values())
        items += [getattr(obj, n) for n in getattr(type(obj), "__slots__", ()) if hasattr(obj, n)]
    return any(_hides_grad(v, depth - 1, seen) for v in items)


def _named_leaves(kwargs):
    for name, value in kwargs.items():
        for t in tree_leaves(value):
            if isinstance(t, torch.Tensor):
                yield name, t


def _reaches(t: torch.Tensor, others: list) -> bool:
    """Whether ``t``'s autograd history reads one of ``others`` (a leaf by its gradient
    accumulator; a computed tensor by its place among its node's outputs)."""
    leaves = {id(p) for p in others if p.grad_fn is None}
    places = {(p.grad_fn, p.output_nr) for p in others if p.grad_fn is not None}
    seen, stack = set(), list(t.grad_fn.next_functions) if t.grad_fn is not None else []
    while stack:
        node, nr = stack.pop()
        if node is None or (node, nr) in seen:
            continue
        seen.add((node, nr))
        var = getattr(node, "variable", None)  # an AccumulateGrad: a leaf tensor
        if (var is not None and id(var) in leaves) or (node, nr) in places:
            return True
        stack.extend(node.next_functions)
    return False
