// CUDA kernels of the fused stage epilogue. Operands share one dense layout (y's), so
// every thread walks flat indices; the bias channel of element i is (i / inner) % C.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "contnet/checks.h"
#include "contnet/cuda_utils.cuh"
#include "contnet/layout.h"
#include "contnet/rk_epilogue.h"

namespace contnet {
namespace {

using cuda::kThreads;

template <typename scalar_t>
struct EpiloguePtrs {
  const scalar_t* y;
  const scalar_t* bias;  // null without bias
  const scalar_t* base[kMaxOutputs];
  const scalar_t* term[kMaxTerms];
  scalar_t* out[kMaxOutputs];
  scalar_t* k;  // null unless k is returned
  ChannelIndex ci;
  int64_t numel;
};

template <typename scalar_t, typename acc_t>
__device__ inline acc_t bias_at(const EpiloguePtrs<scalar_t>& p, int64_t i) {
  return p.bias ? static_cast<acc_t>(p.bias[(i / p.ci.inner) % p.ci.channels]) : acc_t(0);
}

template <typename scalar_t, typename acc_t>
__global__ void epilogue_kernel(EpiloguePtrs<scalar_t> p, Epilogue<acc_t> e) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += stride) {
    const acc_t k = epilogue_k(e, static_cast<acc_t>(p.y[i]), bias_at<scalar_t, acc_t>(p, i));
    acc_t term[kMaxTerms];
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j)
      if (j < e.n_terms) term[j] = static_cast<acc_t>(p.term[j][i]);
CONTNET_UNROLL
    for (int o = 0; o < kMaxOutputs; ++o)
      if (o < e.n_out)
        p.out[o][i] = static_cast<scalar_t>(epilogue_out(e, o, static_cast<acc_t>(p.base[o][i]), term, k));
    if (p.k) p.k[i] = static_cast<scalar_t>(k);
  }
}

template <typename scalar_t>
struct EpilogueGradPtrs {
  const scalar_t* g[kMaxOutputs];
  const scalar_t* gk;  // null without a gradient for k
  const scalar_t* y;
  const scalar_t* bias;
  scalar_t* grad_y;
  scalar_t* grad_term[kMaxTerms];
  ChannelIndex ci;
  int64_t numel;
};

template <typename scalar_t, typename acc_t>
__global__ void epilogue_backward_kernel(EpilogueGradPtrs<scalar_t> p, Epilogue<acc_t> e) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += stride) {
    acc_t g[kMaxOutputs];
CONTNET_UNROLL
    for (int o = 0; o < kMaxOutputs; ++o)
      if (o < e.n_out) g[o] = static_cast<acc_t>(p.g[o][i]);
    const acc_t b = p.bias ? static_cast<acc_t>(p.bias[(i / p.ci.inner) % p.ci.channels]) : acc_t(0);
    const acc_t gk = p.gk ? static_cast<acc_t>(p.gk[i]) : acc_t(0);
    p.grad_y[i] = static_cast<scalar_t>(epilogue_grad_y(e, static_cast<acc_t>(p.y[i]), b, g, gk));
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j)
      if (j < e.n_terms) p.grad_term[j][i] = static_cast<scalar_t>(epilogue_grad_term(e, j, g));
  }
}

at::MemoryFormat prepare(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                         at::TensorList bases, at::TensorList terms) {
  TORCH_CHECK(y.defined(), "y is undefined");
  check_float_dtype(y, "y");
  TORCH_CHECK(y.is_cuda(), "y must be a CUDA tensor for the CUDA kernel, got ", y.device());
  TORCH_CHECK(y.dim() >= 2, "y must have a channel dimension (dim >= 2), got shape ", y.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == y.size(1),
                "bias must have shape (", y.size(1), ",) for y's channels, got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == y.scalar_type() && bias->device() == y.device(),
                "bias must have y's dtype and device");
  }
  check_same_kind(bases, "bases", y, "y");
  check_same_kind(terms, "terms", y, "y");
  return dense_format(y);
}

std::vector<at::Tensor> rk_epilogue_cuda(const at::Tensor& y_in, const std::optional<at::Tensor>& bias_in,
                                         int64_t act, double scale, at::TensorList bases_in,
                                         at::TensorList terms_in, double h, at::ArrayRef<double> coeffs,
                                         bool return_k) {
  const auto fmt = prepare(y_in, bias_in, bases_in, terms_in);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor y = in_format(y_in, fmt);
  const at::Tensor bias = bias_in.has_value() && bias_in->defined() ? bias_in->contiguous() : at::Tensor();
  std::vector<at::Tensor> bases, terms, outs;
  for (const auto& t : bases_in) bases.push_back(in_format(t, fmt)), outs.push_back(at::empty_like(y));
  for (const auto& t : terms_in) terms.push_back(in_format(t, fmt));
  if (return_k) outs.push_back(at::empty_like(y));
  const int n_out = static_cast<int>(bases.size()), n_terms = static_cast<int>(terms.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rk_epilogue_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto e = make_epilogue<acc_t>(static_cast<int>(act), scale, n_out, n_terms, h, coeffs);
    if (y.numel() == 0) return;
    EpiloguePtrs<scalar_t> p{};
    p.y = y.data_ptr<scalar_t>();
    p.bias = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    for (int o = 0; o < n_out; ++o) p.base[o] = bases[o].data_ptr<scalar_t>(), p.out[o] = outs[o].data_ptr<scalar_t>();
    for (int j = 0; j < n_terms; ++j) p.term[j] = terms[j].data_ptr<scalar_t>();
    p.k = return_k ? outs.back().data_ptr<scalar_t>() : nullptr;
    p.ci = channel_index(y, fmt);
    p.numel = y.numel();
    epilogue_kernel<scalar_t, acc_t>
        <<<cuda::grid_for(p.numel), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, e);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return outs;
}

at::Tensor channel_sum(const at::Tensor& t) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (d != 1) dims.push_back(d);
  return at::sum(t, dims);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> rk_epilogue_backward_cuda(
    at::TensorList grads_in, const std::optional<at::Tensor>& grad_k_in, const at::Tensor& y_in,
    const std::optional<at::Tensor>& bias_in, int64_t act, double scale, int64_t n_terms, double h,
    at::ArrayRef<double> coeffs) {
  const auto fmt = prepare(y_in, bias_in, grads_in, {});
  const c10::cuda::CUDAGuard guard(y_in.device());
  const bool has_gk = grad_k_in.has_value() && grad_k_in->defined();
  if (has_gk) check_like(*grad_k_in, y_in, "grad_k", "y");
  const at::Tensor y = in_format(y_in, fmt);
  const at::Tensor bias = bias_in.has_value() && bias_in->defined() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor gk = has_gk ? in_format(*grad_k_in, fmt) : at::Tensor();
  std::vector<at::Tensor> grads, grad_terms;
  for (const auto& t : grads_in) grads.push_back(in_format(t, fmt));
  for (int64_t j = 0; j < n_terms; ++j) grad_terms.push_back(at::empty_like(y));
  at::Tensor grad_y = at::empty_like(y);
  const int n_out = static_cast<int>(grads.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rk_epilogue_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto e = make_epilogue<acc_t>(static_cast<int>(act), scale, n_out, static_cast<int>(n_terms), h, coeffs);
    if (y.numel() == 0) return;
    EpilogueGradPtrs<scalar_t> p{};
    for (int o = 0; o < n_out; ++o) p.g[o] = grads[o].data_ptr<scalar_t>();
    p.gk = has_gk ? gk.data_ptr<scalar_t>() : nullptr;
    p.y = y.data_ptr<scalar_t>();
    p.bias = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    p.grad_y = grad_y.data_ptr<scalar_t>();
    for (int64_t j = 0; j < n_terms; ++j) p.grad_term[j] = grad_terms[j].data_ptr<scalar_t>();
    p.ci = channel_index(y, fmt);
    p.numel = y.numel();
    epilogue_backward_kernel<scalar_t, acc_t>
        <<<cuda::grid_for(p.numel), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, e);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor grad_bias = bias.defined() ? channel_sum(grad_y).to(bias.scalar_type()) : at::empty({0}, y.options());
  return {grad_y, grad_terms, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CUDA, m) {
  m.impl("rk_epilogue", &rk_epilogue_cuda);
  m.impl("rk_epilogue_backward", &rk_epilogue_backward_cuda);
}

}  // namespace contnet
