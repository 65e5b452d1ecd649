// Host-side layout handling for kernels that walk operands as flat arrays: every operand is
// brought to one dense memory format (contiguous, or channels_last for 4-d tensors). Dense
// operands in that format are used as they are (no copy); others are copied once.
// Defined once, in csrc/layout.cpp, by the host compiler; the CUDA sources call that code.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace contnet {

// channels_last if `t` is a 4-d tensor stored that way (and not also contiguous), else contiguous.
at::MemoryFormat dense_format(const at::Tensor& t);

// `t` dense in format `f` (4-d only for channels_last; others contiguous); undefined stays so.
at::Tensor in_format(const at::Tensor& t, at::MemoryFormat f);

// Where channel dim 1 sits in the flat order of a dense tensor: element i has channel
// (i / inner) % channels. Plain data: the CUDA kernels take it by value.
struct ChannelIndex {
  int64_t inner;
  int64_t channels;
};

ChannelIndex channel_index(const at::Tensor& t, at::MemoryFormat f);

// Sum over every dimension but the channel dimension 1 (a per-channel bias's gradient).
at::Tensor channel_sum(const at::Tensor& t);

// The fused epilogue's operands, checked (check_epilogue, and y on `device`) and brought to
// y's dense format, with the outputs allocated: one per base, then k if asked for, then
// relu's bool mask if asked for (act must be relu).
struct EpilogueOperands {
  at::Tensor y, bias;  // bias undefined without one
  std::vector<at::Tensor> bases, terms, outs;
  at::Tensor mask;     // undefined unless asked for; also the last of outs
  ChannelIndex ci;
};

EpilogueOperands epilogue_operands(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                                   int64_t act, at::TensorList bases, at::TensorList terms,
                                   bool return_k, bool return_mask, c10::DeviceType device);

// The same for the epilogue's backward: the outputs' gradients `grads` and k's `grad_k`
// (undefined if none), with the gradients of y and of the `n_terms` terms allocated. A
// bool y is relu's mask (`mask` set, `y` undefined; act must be relu); the gradients'
// dtype is then that of grads (or grad_k). With a bias, float16/bfloat16 operands are
// widened to float, so that the bias's gradient sums y's gradients before they are
// rounded (as autograd of the forward's float arithmetic does).
struct EpilogueGradOperands {
  at::Tensor y, mask, bias, grad_k;
  std::vector<at::Tensor> grads, grad_terms;
  at::Tensor grad_y;
  ChannelIndex ci;
  at::ScalarType dtype;  // of the gradients returned

  // (grad_y, grad_terms, grad_bias) once the kernel has written grad_y and grad_terms, in
  // `dtype`; grad_bias is empty without a bias.
  std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> results() const;
};

EpilogueGradOperands epilogue_grad_operands(at::TensorList grads,
                                            const std::optional<at::Tensor>& grad_k,
                                            const at::Tensor& y,
                                            const std::optional<at::Tensor>& bias, int64_t act,
                                            int64_t n_terms, c10::DeviceType device);

// rk_combine's operands (coefficients by value) as its kernels take them: the terms whose
// coefficient h * c does not round to zero in the accumulation type (float below float64)
// with their coefficients -- the others are skipped, as the epilogue skips them, so that a
// non-finite term with a zero coefficient has no effect -- and, for a float16/bfloat16 sum
// longer than one pass, x and the terms in float (`widened`): the running sum is then not
// rounded to the storage type between passes; the caller converts the result back.
struct CombineOperands {
  at::Tensor x;
  std::vector<at::Tensor> terms;
  std::vector<double> coeffs;
  bool widened;
};

CombineOperands combine_operands(const at::Tensor& x, at::TensorList terms, double h,
                                 at::ArrayRef<double> coeffs);

// The error estimate's operands (checked by check_error, x on `device`), in x's dense format:
// each sample (dim 0) is then one run of `m` elements at offset s * m. `x_next` is the given
// new state, or allocated for the kernel to write (`computed`); `sq` the per-sample output,
// in float64 for float64 states and float32 otherwise.
struct ErrorOperands {
  at::Tensor x, x_next, sq;
  std::vector<at::Tensor> terms;
  bool computed;
  int64_t samples, m;
};

ErrorOperands error_operands(const at::Tensor& x, const std::optional<at::Tensor>& x_next,
                             at::TensorList terms, const c10::ArrayRef<double>* b,
                             c10::ArrayRef<double> e, double rtol, double atol,
                             c10::DeviceType device);

}  // namespace contnet
