"""The fused ops of contnet.

Each op has a typed Python wrapper (``combine``, ``epilogue``, ``interp``), a pure-PyTorch
reference (``reference``, ``*_reference``), and, when the extension ``contnet._C`` is
built, C++/CUDA kernels registered as ``torch.ops.contnet.*`` with autograd (in C++) and
fake (meta) implementations (``fake``), so ``torch.compile(fullgraph=True)`` traces
through them. Without the extension, or under :func:`use_reference`, the wrappers run the
references (one warning when the extension is missing); ``extension`` decides.

Ops (float32, float64, float16, bfloat16 -- half types accumulate in float; CPU and CUDA):

- :func:`rk_combine` -- stage accumulation ``out = x + h * sum_j c_j k_j`` for any number
  of same-shaped terms in one pass over memory. Coefficients by value (Python floats), or a
  1-d tensor of learned coefficients that receives ``grad_c_j = h <k_j, grad>``.
- :func:`rk_epilogue` -- the residual unit's tail ``k = scale * act(y + bias)`` fused with
  the stage updates that consume ``k`` (next stage input, running ``x_n + h sum b_i k_i``):
  one pass over the state per stage.
- :func:`rk_step_error` -- an adaptive step's new state ``x + h sum_j b_j k_j``, its
  embedded error ``h sum_j (b_j - bhat_j) k_j`` and each sample's mean squared scaled
  error in one pass (the error is never written out); the controller reads one number.
- :func:`basis_interp` -- time-interpolated weights ``W[s] = sum_k phi[s, k] theta[k]`` for
  all stage times of a forward pass and several tensors in one launch; its backward
  scatters into the basis nodes (the same op with ``phi`` transposed).
"""

from . import fake  # noqa: F401  (registers the fake kernels)
from .activations import ACT_CODES
from .combine import combine_learned_unchecked, combine_unchecked, rk_combine
from .epilogue import epilogue_kernel, epilogue_unchecked, rk_epilogue
from .error import error_unchecked, rk_step_error
from .extension import backend, extension_loaded, in_forward_ad, in_func_transform, use_reference
from .interp import basis_interp
from .reference import (
    basis_interp_reference,
    rk_combine_reference,
    rk_epilogue_reference,
    rk_step_error_reference,
)

__all__ = [
    "ACT_CODES",
    "backend",
    "extension_loaded",
    "use_reference",
    "in_func_transform",
    "in_forward_ad",
    "rk_combine",
    "rk_combine_reference",
    "rk_epilogue",
    "rk_epilogue_reference",
    "rk_step_error",
    "rk_step_error_reference",
    "basis_interp",
    "basis_interp_reference",
    "combine_unchecked",
    "combine_learned_unchecked",
    "epilogue_kernel",
    "epilogue_unchecked",
    "error_unchecked",
]
