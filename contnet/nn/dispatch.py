"""When a unit may be called past ``nn.Module`` dispatch: reading its weights for every
stage time ahead, or applying its layers' weights directly, is allowed only where calling
the modules would run nothing else (no hooks, no JIT tracing, no parametrization)."""

from __future__ import annotations

import torch
from torch import nn

_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def dispatch_free(*modules: nn.Module) -> bool:
    """Whether calling these modules' ``forward`` directly skips nothing that calling the
    modules does: no hooks on them, no global module hooks, no JIT tracing (which records
    module scopes). Where torch keeps its hooks elsewhere, the answer is no."""
    from torch.nn.modules import module as nn_module

    if torch.jit.is_tracing():
        return False
    for name in _GLOBAL_HOOKS:
        hooks = getattr(nn_module, name, None)
        if hooks is None or hooks:
            return False
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return not any(getattr(m, kind, True) for m in modules for kind in kinds)
