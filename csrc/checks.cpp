// Definitions of the input checks declared in contnet/checks.h.
#include "contnet/checks.h"

#include <c10/util/Exception.h>

#include "contnet/rk_combine.h"

namespace contnet {

void check_float_dtype(const at::Tensor& t, const char* name, const char* alternative) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16",
              alternative ? ", " : "", alternative ? alternative : "", ", got ", dt);
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const std::string& name,
                const char* ref_name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ",
              ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

void check_terms(const at::Tensor& ref, const char* ref_name, at::TensorList ts,
                 const char* name, size_t n, const char* coef_name) {
  TORCH_CHECK(ref.defined(), ref_name, " is undefined");
  check_float_dtype(ref, ref_name);
  TORCH_CHECK(ts.size() == n, name, " and ", coef_name, " must have the same length, got ",
              ts.size(), " and ", n);
  check_same_kind(ts, name, ref, ref_name);
}

void check_learned_coeffs(const at::Tensor& coeffs, const at::Tensor& ref, const char* ref_name,
                          size_t n) {
  TORCH_CHECK(n <= static_cast<size_t>(kMaxTerms), "terms must hold at most ", kMaxTerms,
              " tensors with learned coefficients, got ", n);
  TORCH_CHECK(coeffs.defined(), "coeffs is undefined");
  check_float_dtype(coeffs, "coeffs");
  TORCH_CHECK(coeffs.dim() == 1 && static_cast<size_t>(coeffs.size(0)) == n,
              "coeffs must be a 1-d tensor with one value per term (", n, "), got shape ",
              coeffs.sizes());
  TORCH_CHECK(coeffs.device() == ref.device(), "coeffs must be on the device of ", ref_name, " (",
              ref.device(), "), got ", coeffs.device());
}

void check_same_kind(at::TensorList ts, const char* name, const at::Tensor& ref,
                     const char* ref_name) {
  for (size_t j = 0; j < ts.size(); ++j)
    check_like(ts[j], ref, std::string(name) + "[" + std::to_string(j) + "]", ref_name);
}

void check_epilogue(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                    at::TensorList bases, at::TensorList terms, const char* bases_name,
                    const char* y_name) {
  TORCH_CHECK(y.defined(), y_name, " is undefined");
  check_float_dtype(y, y_name);
  TORCH_CHECK(y.dim() >= 2, y_name, " must have a channel dimension (dim >= 2), got shape ",
              y.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == y.size(1), "bias must have shape (",
                y.size(1), ",) for ", y_name, "'s channels, got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == y.scalar_type(), "bias must have ", y_name, "'s dtype (",
                y.scalar_type(), "), got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == y.device(), "bias must be on ", y_name, "'s device (",
                y.device(), "), got ", bias->device());
  }
  check_same_kind(bases, bases_name, y, y_name);
  check_same_kind(terms, "terms", y, y_name);
}

}  // namespace contnet
