// Definitions of the input checks declared in contnet/checks.h.
#include "contnet/checks.h"

#include <c10/util/Exception.h>

#include <cmath>

#include "contnet/activations.h"
#include "contnet/rk_combine.h"
#include "contnet/rk_epilogue.h"

namespace contnet {

void check_float_dtype(const at::Tensor& t, const char* name, const char* alternative) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16",
              alternative ? ", " : "", alternative ? alternative : "", ", got ", dt);
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const std::string& name,
                const char* ref_name) {
  TORCH_CHECK_VALUE(t.defined(), name, " is undefined");
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ",
              ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

void check_terms(const at::Tensor& ref, const char* ref_name, at::TensorList ts,
                 const char* name, size_t n, const char* coef_name) {
  TORCH_CHECK_VALUE(ref.defined(), ref_name, " is undefined");
  check_float_dtype(ref, ref_name);
  TORCH_CHECK_VALUE(ts.size() == n, name, " and ", coef_name, " must have the same length, got ",
              ts.size(), " and ", n);
  check_same_kind(ts, name, ref, ref_name);
}

void check_learned_coeffs(const at::Tensor& coeffs, const at::Tensor& ref, const char* ref_name,
                          size_t n) {
  TORCH_CHECK_VALUE(n <= static_cast<size_t>(kMaxTerms), "terms must hold at most ", kMaxTerms,
              " tensors with learned coefficients, got ", n);
  TORCH_CHECK_VALUE(coeffs.defined(), "coeffs is undefined");
  check_float_dtype(coeffs, "coeffs");
  TORCH_CHECK_VALUE(coeffs.dim() == 1 && static_cast<size_t>(coeffs.size(0)) == n,
              "coeffs must be a 1-d tensor with one value per term (", n, "), got shape ",
              coeffs.sizes());
  TORCH_CHECK_VALUE(coeffs.device() == ref.device(), "coeffs must be on the device of ", ref_name, " (",
              ref.device(), "), got ", coeffs.device());
}

void check_error(const at::Tensor& x, const at::Tensor* x_next, at::TensorList terms,
                 const c10::ArrayRef<double>* b, c10::ArrayRef<double> e, double rtol, double atol) {
  TORCH_CHECK_VALUE(x.defined(), "x is undefined");
  check_float_dtype(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have a batch dimension (dim 0): the error norm is taken per sample, got a 0-d tensor");
  if (x_next != nullptr) check_like(*x_next, x, "x_next", "x");
  check_terms(x, "x", terms, "terms", e.size(), "e");
  if (b != nullptr)
    TORCH_CHECK_VALUE(b->size() == terms.size(), "terms and b must have the same length, got ", terms.size(), " and ",
                      b->size());
  TORCH_CHECK_VALUE(terms.size() <= static_cast<size_t>(kMaxTerms), "terms must hold at most ", kMaxTerms,
                    " tensors (the stages of one step), got ", terms.size());
  TORCH_CHECK_VALUE(std::isfinite(rtol) && rtol >= 0, "rtol must be a finite number >= 0, got ", rtol);
  TORCH_CHECK_VALUE(std::isfinite(atol) && atol >= 0, "atol must be a finite number >= 0, got ", atol);
}

void check_same_kind(at::TensorList ts, const char* name, const at::Tensor& ref,
                     const char* ref_name) {
  for (size_t j = 0; j < ts.size(); ++j)
    check_like(ts[j], ref, std::string(name) + "[" + std::to_string(j) + "]", ref_name);
}

void check_epilogue(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                    at::TensorList bases, at::TensorList terms, const char* bases_name,
                    const char* y_name) {
  TORCH_CHECK_VALUE(y.defined(), y_name, " is undefined");
  check_float_dtype(y, y_name);
  TORCH_CHECK_VALUE(y.dim() >= 2, y_name, " must have a channel dimension (dim >= 2), got shape ",
              y.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == y.size(1), "bias must have shape (",
                y.size(1), ",) for ", y_name, "'s channels, got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == y.scalar_type(), "bias must have ", y_name, "'s dtype (",
                y.scalar_type(), "), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->device() == y.device(), "bias must be on ", y_name, "'s device (",
                y.device(), "), got ", bias->device());
  }
  check_same_kind(bases, bases_name, y, y_name);
  check_same_kind(terms, "terms", y, y_name);
}

void check_device(const at::Tensor& t, const char* name, c10::DeviceType device) {
  const auto kind = c10::DeviceTypeName(device);
  TORCH_CHECK_VALUE(t.device().type() == device, name, " must be a ", kind, " tensor for the ", kind,
                    " kernel, got ", t.device());
}

void check_grad(const at::Tensor& grad, const char* name) {
  TORCH_CHECK_VALUE(grad.defined(), name, " is undefined");
  check_float_dtype(grad, name);
}

void check_epilogue_settings(int64_t act, int64_t n_out, int64_t n_terms, size_t n_coeffs,
                             bool return_mask) {
  TORCH_CHECK_VALUE(act >= 0 && act < kNumActs, "act must be an activation code in [0, ", int(kNumActs),
                    "), got ", act);
  TORCH_CHECK_VALUE(n_out >= 0 && n_out <= kMaxOutputs, "bases must hold at most ", kMaxOutputs,
                    " tensors, got ", n_out);
  TORCH_CHECK_VALUE(n_terms >= 0 && n_terms <= kMaxTerms, "terms must hold at most ", kMaxTerms,
                    " tensors, got ", n_terms);
  TORCH_CHECK_VALUE(static_cast<int64_t>(n_coeffs) == n_out * (n_terms + 1),
                    "coeffs must hold len(bases) * (len(terms) + 1) = ", n_out * (n_terms + 1),
                    " values, got ", n_coeffs);
  TORCH_CHECK_VALUE(!return_mask || act == kRelu, "return_mask needs act relu (", int(kRelu),
                    "), got act ", act);
}

std::pair<at::Tensor, const char*> check_epilogue_grad(at::TensorList grads,
                                                       const std::optional<at::Tensor>& grad_k,
                                                       const at::Tensor& y,
                                                       const std::optional<at::Tensor>& bias,
                                                       int64_t act, int64_t n_terms) {
  const bool has_gk = grad_k.has_value() && grad_k->defined();
  TORCH_CHECK_VALUE(y.defined(), "y is undefined");
  // with a mask the gradients' dtype comes from the gradients, checked against the first
  at::Tensor like = y;
  const char* like_name = "y";
  if (y.scalar_type() == at::kBool) {
    TORCH_CHECK_VALUE(act == kRelu, "y may be a bool mask only for act relu (", int(kRelu),
                      "), got act ", act);
    TORCH_CHECK_VALUE(!grads.empty() || has_gk, "with a bool mask for y, grads or grad_k must be given");
    like = grads.empty() ? *grad_k : grads[0];
    like_name = grads.empty() ? "grad_k" : "grads[0]";
    TORCH_CHECK_VALUE(y.sizes() == like.sizes(), "y (a mask) must have the shape of ", like_name, " ",
                      like.sizes(), ", got ", y.sizes());
    TORCH_CHECK_VALUE(y.device() == like.device(), "y (a mask) must be on the device of ", like_name,
                      " (", like.device(), "), got ", y.device());
  } else {
    check_float_dtype(y, "y", "or for act relu a bool mask of y + bias > 0");
  }
  check_epilogue(like, bias, grads, {}, "grads", like_name);
  TORCH_CHECK_VALUE(n_terms >= 0 && n_terms <= kMaxTerms, "n_terms must be 0 to ", kMaxTerms,
                    ", got ", n_terms);
  if (has_gk) check_like(*grad_k, like, "grad_k", like_name);
  return {like, like_name};
}

void check_phi_constant(const at::Tensor& phi) {
  TORCH_CHECK_VALUE(!(phi.defined() && phi.requires_grad()),
                    "phi must not require grad: the basis coefficients are constants");
}

void check_basis_interp(const at::Tensor& phi, at::TensorList thetas) {
  TORCH_CHECK_VALUE(phi.defined(), "phi is undefined");
  TORCH_CHECK_VALUE(phi.dim() == 2, "phi must be a (stages, nodes) matrix, got shape ", phi.sizes());
  TORCH_CHECK_TYPE(phi.scalar_type() == at::kDouble, "phi must be float64, got ", phi.scalar_type());
  TORCH_CHECK_VALUE(phi.size(1) >= 1, "phi must have at least one node (column), got shape ", phi.sizes());
  check_phi_constant(phi);
  TORCH_CHECK_VALUE(!thetas.empty(), "thetas must hold at least one tensor");
  for (size_t j = 0; j < thetas.size(); ++j) {
    const auto& t = thetas[j];
    const std::string name = "thetas[" + std::to_string(j) + "]";
    TORCH_CHECK_VALUE(t.defined(), name, " is undefined");
    check_float_dtype(t, name.c_str());
    TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(0) == phi.size(1), name, " must have phi.size(1) = ",
                      phi.size(1), " nodes along dim 0, got shape ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == phi.device(), name, " must be on phi's device (", phi.device(),
                      "), got ", t.device());
  }
}

}  // namespace contnet
