// The one declaration of every contnet op schema. Kernels register their implementations
// per backend in cpu/ and cuda/, autograd in autograd.cpp; fake (meta) kernels are
// registered from Python (contnet/ops.py). Importing contnet._C (python.cpp) runs these
// registrations.
#include <torch/library.h>

TORCH_LIBRARY(contnet, m) {
  // Stage accumulation, coefficients by value:
  //   out = x + h * sum_j coeffs[j] * terms[j]
  m.def("rk_combine(Tensor x, Tensor[] terms, float h, float[] coeffs) -> Tensor");
  //   grad_terms[j] = h * coeffs[j] * grad   (the gradient for x is grad itself)
  m.def("rk_combine_backward(Tensor grad, float h, float[] coeffs) -> Tensor[]");

  // Stage accumulation with learned coefficients (a 1-d tensor on x's device):
  //   out = x + h * sum_j coeffs[j] * terms[j]
  m.def("rk_combine_learned(Tensor x, Tensor[] terms, float h, Tensor coeffs) -> Tensor");
  //   (grad_terms[j] = h * coeffs[j] * grad, grad_coeffs[j] = h * <terms[j], grad>)
  m.def(
      "rk_combine_learned_backward(Tensor grad, Tensor[] terms, float h, Tensor coeffs) "
      "-> (Tensor[], Tensor)");

  // Fused stage epilogue: the unit's tail and the stage updates in one pass.
  //   k = scale * act(y + bias[channel])
  //   out[o] = bases[o] + h * (sum_j coeffs[o][j] * terms[j] + coeffs[o][T] * k)
  // coeffs is row-major len(bases) x (len(terms) + 1); returns out, then k if return_k,
  // then if return_mask (act relu only) the bool tensor y + bias > 0 (NaN: true): all that
  // relu's backward reads, a quarter of y's bytes at float32.
  m.def(
      "rk_epilogue(Tensor y, Tensor? bias, int act, float scale, Tensor[] bases, "
      "Tensor[] terms, float h, float[] coeffs, bool return_k, bool return_mask=False) -> Tensor[]");
  // Gradients for y, terms and bias from the gradients of the outputs (grads, one per row of
  // coeffs) and of k (grad_k, if k was returned); the gradient for bases[o] is grads[o].
  // y is the forward's y, or for act relu its mask (return_mask); identity's derivative
  // does not depend on y's values (its autograd passes an output gradient as y).
  m.def(
      "rk_epilogue_backward(Tensor[] grads, Tensor? grad_k, Tensor y, Tensor? bias, int act, "
      "float scale, int n_terms, float h, float[] coeffs) -> (Tensor, Tensor[], Tensor)");

  // Embedded error estimate of an adaptive step (rtol, atol >= 0; terms: the step's rates):
  //   x_next = x + h * sum_j b[j] * terms[j]
  //   err    = h * sum_j e[j] * terms[j]                       (e = b - bhat)
  //   sq[s]  = mean over sample s (dim 0) of (err / (rtol * max(|x|, |x_next|) + atol))^2
  // with a zero err counting as zero; sq in float64 for a float64 x, float32 otherwise.
  m.def("rk_step_error(Tensor x, Tensor[] terms, float h, float[] b, float[] e, float rtol, float atol) "
        "-> (Tensor, Tensor)");
  // The same with x_next given (a first-same-as-last pair rates x_next before its error):
  // returns sq.
  m.def("rk_error_norm(Tensor x, Tensor x_next, Tensor[] terms, float h, float[] e, float rtol, float atol) "
        "-> Tensor");

  // Time-interpolated weight lookup for all stage times and several tensors at once:
  //   out[j][s] = sum_k phi[s, k] * thetas[j][k]     (phi: S x K float64)
  // Its backward is itself with phi transposed.
  m.def("basis_interp(Tensor phi, Tensor[] thetas) -> Tensor[]");
}
