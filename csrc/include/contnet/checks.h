// Input checks shared by every backend: each names the argument and what was expected, and
// raises ValueError (TypeError for a wrong dtype) in Python. Every check of the ops' inputs
// is here. Defined once, in csrc/checks.cpp, by the host compiler: the CUDA sources call the
// same compiled code instead of carrying their own copy.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstddef>
#include <optional>
#include <string>
#include <utility>

namespace contnet {

// `t` is float32, float64, float16 or bfloat16; `alternative`, if given, names what else the
// caller accepts (checked by the caller), in the error after the float types.
void check_float_dtype(const at::Tensor& t, const char* name, const char* alternative = nullptr);

// `t` has the shape, dtype and device of `ref`.
void check_like(const at::Tensor& t, const at::Tensor& ref, const std::string& name,
                const char* ref_name);

// Every tensor of `ts` is like `ref`; `n` coefficients are given for them.
void check_terms(const at::Tensor& ref, const char* ref_name, at::TensorList ts,
                 const char* name, size_t n, const char* coef_name);

// `coeffs` is a 1-d float tensor of `n` learned coefficients on the device of `ref` (named
// `ref_name` in errors).
void check_learned_coeffs(const at::Tensor& coeffs, const at::Tensor& ref, const char* ref_name,
                          size_t n);

// Every tensor of `ts` is like `ref` (check_like), named `name[j]` in errors.
void check_same_kind(at::TensorList ts, const char* name, const at::Tensor& ref,
                     const char* ref_name);

// The fused epilogue's operands: `y` float with a channel dimension (dim 1); `bias`, if
// given, one value per channel in y's dtype and device; `bases` (named `bases_name` in
// errors: the backward checks its output gradients the same way) and `terms` like `y`.
// `y_name`: y's name in errors (the backward with a mask checks against grads[0]).
void check_epilogue(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                    at::TensorList bases, at::TensorList terms, const char* bases_name = "bases",
                    const char* y_name = "y");

// `t` (named `name`) is on a `device` tensor, for that device's kernel.
void check_device(const at::Tensor& t, const char* name, c10::DeviceType device);

// `grad` is a defined float tensor (a backward's incoming gradient).
void check_grad(const at::Tensor& grad, const char* name = "grad");

// The epilogue's settings: an activation code; at most kMaxOutputs bases and kMaxTerms
// terms; their coefficients, len(bases) * (len(terms) + 1) of them; relu's mask only with
// relu.
void check_epilogue_settings(int64_t act, int64_t n_out, int64_t n_terms, size_t n_coeffs,
                             bool return_mask = false);

// The epilogue backward's operands: `y` float, or relu's bool mask of y + bias > 0 like the
// first given gradient (grads[0], else grad_k); the gradients like y (or that one); the
// bias as check_epilogue takes it. Returns the tensor the others are like and its name.
std::pair<at::Tensor, const char*> check_epilogue_grad(at::TensorList grads,
                                                       const std::optional<at::Tensor>& grad_k,
                                                       const at::Tensor& y,
                                                       const std::optional<at::Tensor>& bias,
                                                       int64_t act, int64_t n_terms);

// The error estimate's operands: `x` float with a batch dimension (dim 0); `x_next`, if
// given, and `terms` like `x`; at most kMaxTerms terms with one coefficient each in `e` and,
// when `b` is given (x_next computed), in `b`; `rtol` and `atol` finite and >= 0.
void check_error(const at::Tensor& x, const at::Tensor* x_next, at::TensorList terms,
                 const c10::ArrayRef<double>* b, c10::ArrayRef<double> e, double rtol, double atol);

// `phi` needs no gradient: the basis coefficients are constants.
void check_phi_constant(const at::Tensor& phi);

// The weight lookup's operands: `phi` a float64 (stages, nodes) matrix that needs no
// gradient; `thetas` one or more float tensors with phi.size(1) nodes along dim 0, on
// phi's device.
void check_basis_interp(const at::Tensor& phi, at::TensorList thetas);

}  // namespace contnet
