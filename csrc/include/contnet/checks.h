// Input checks shared by every backend: each names the argument and what was expected.
// Defined once, in csrc/checks.cpp, by the host compiler: the CUDA sources call the same
// compiled code instead of carrying their own copy.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <optional>
#include <string>

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

}  // namespace contnet
