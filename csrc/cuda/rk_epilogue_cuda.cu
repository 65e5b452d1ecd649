// CUDA kernels of the fused stage epilogue. Operands share one dense layout (y's), so
// every thread walks flat indices; the bias channel of element i is (i / inner) % C.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <type_traits>
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
  bool* mask;   // null unless relu's mask is returned
  ChannelIndex ci;
  int64_t numel;
};

// bias[channel] of the VEC elements from i: one division for the first, then stepping.
template <int VEC, typename scalar_t, typename acc_t>
__device__ inline void bias_of(const scalar_t* bias, ChannelIndex ci, int64_t i, acc_t* b) {
  if (bias == nullptr) {
CONTNET_UNROLL
    for (int q = 0; q < VEC; ++q) b[q] = acc_t(0);
    return;
  }
  const int64_t run = i / ci.inner;
  int64_t c = run % ci.channels, left = ci.inner - (i - run * ci.inner);
CONTNET_UNROLL
  for (int q = 0; q < VEC; ++q) {
    b[q] = static_cast<acc_t>(bias[c]);
    if (--left == 0) {
      left = ci.inner;
      c = c + 1 == ci.channels ? 0 : c + 1;
    }
  }
}

// VEC consecutive elements from i: one 16-byte load when VEC > 1 (callers launch VEC > 1
// only when every pointer is 16-byte aligned).
template <int VEC, typename scalar_t, typename acc_t>
__device__ inline void load(const scalar_t* p, int64_t i, acc_t* v) {
  const auto pk = *reinterpret_cast<const cuda::Pack<scalar_t, VEC>*>(p + i);
CONTNET_UNROLL
  for (int e = 0; e < VEC; ++e) v[e] = static_cast<acc_t>(pk.val[e]);
}

template <int VEC, typename scalar_t, typename acc_t>
__device__ inline void store(scalar_t* p, int64_t i, const acc_t* v) {
  cuda::Pack<scalar_t, VEC> pk;
CONTNET_UNROLL
  for (int e = 0; e < VEC; ++e) pk.val[e] = static_cast<scalar_t>(v[e]);
  *reinterpret_cast<cuda::Pack<scalar_t, VEC>*>(p + i) = pk;
}

// VEC mask bytes from i, in one access of VEC bytes (aligned: i is a multiple of VEC and
// the mask's base pointer is 16-byte aligned when VEC > 1).
template <int VEC>
__device__ inline void load_mask(const bool* p, int64_t i, bool* m) {
  const auto pk = *reinterpret_cast<const cuda::Pack<bool, VEC>*>(p + i);
CONTNET_UNROLL
  for (int e = 0; e < VEC; ++e) m[e] = pk.val[e];
}

template <int VEC>
__device__ inline void store_mask(bool* p, int64_t i, const bool* m) {
  cuda::Pack<bool, VEC> pk;
CONTNET_UNROLL
  for (int e = 0; e < VEC; ++e) pk.val[e] = m[e];
  *reinterpret_cast<cuda::Pack<bool, VEC>*>(p + i) = pk;
}

// Elements [i, i + VEC) of the forward.
template <int VEC, typename scalar_t, typename acc_t>
__device__ inline void epilogue_at(const EpiloguePtrs<scalar_t>& p, const Epilogue<acc_t>& e, int64_t i) {
  acc_t k[VEC], b[VEC], term[kMaxTerms][VEC], v[VEC];
  load<VEC>(p.y, i, k);
  bias_of<VEC>(p.bias, p.ci, i, b);
  if (p.mask) {
    bool m[VEC];
CONTNET_UNROLL
    for (int q = 0; q < VEC; ++q) m[q] = relu_pass(k[q] + b[q]);
    store_mask<VEC>(p.mask, i, m);
  }
CONTNET_UNROLL
  for (int q = 0; q < VEC; ++q) k[q] = epilogue_k(e, k[q], b[q]);
CONTNET_UNROLL
  for (int j = 0; j < kMaxTerms; ++j)
    if (j < e.n_terms) load<VEC>(p.term[j], i, term[j]);
CONTNET_UNROLL
  for (int o = 0; o < kMaxOutputs; ++o) {
    if (o < e.n_out) {
      load<VEC>(p.base[o], i, v);
CONTNET_UNROLL
      for (int q = 0; q < VEC; ++q) {
        acc_t t[kMaxTerms];
CONTNET_UNROLL
        for (int j = 0; j < kMaxTerms; ++j) t[j] = j < e.n_terms ? term[j][q] : acc_t(0);
        v[q] = epilogue_out(e, o, v[q], t, k[q]);
      }
      store<VEC>(p.out[o], i, v);
    }
  }
  if (p.k) store<VEC>(p.k, i, k);
}

// Grid-stride loop: VEC elements per thread per iteration, then single elements for the tail.
template <int VEC, typename F>
__device__ inline void for_each_element(int64_t numel, F&& f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = numel / VEC;
  for (int64_t v = first; v < nvec; v += stride) f(std::integral_constant<int, VEC>{}, v * VEC);
  for (int64_t i = nvec * VEC + first; i < numel; i += stride) f(std::integral_constant<int, 1>{}, i);
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void epilogue_kernel(EpiloguePtrs<scalar_t> p, Epilogue<acc_t> e) {
  for_each_element<VEC>(p.numel, [&](auto n, int64_t i) { epilogue_at<decltype(n)::value>(p, e, i); });
}

template <typename scalar_t>
struct EpilogueGradPtrs {
  const scalar_t* g[kMaxOutputs];
  const scalar_t* gk;  // null without a gradient for k
  const scalar_t* y;     // null with a mask
  const bool* mask;      // relu's mask, or null
  const scalar_t* bias;
  scalar_t* grad_y;
  scalar_t* grad_term[kMaxTerms];
  ChannelIndex ci;
  int64_t numel;
};

// Elements [i, i + VEC) of the backward.
template <int VEC, typename scalar_t, typename acc_t>
__device__ inline void epilogue_grad_at(const EpilogueGradPtrs<scalar_t>& p, const Epilogue<acc_t>& e,
                                        int64_t i) {
  acc_t g[kMaxOutputs][VEC], y[VEC], gk[VEC], b[VEC], out[VEC];
  bool m[VEC];
CONTNET_UNROLL
  for (int o = 0; o < kMaxOutputs; ++o)
    if (o < e.n_out) load<VEC>(p.g[o], i, g[o]);
  if (p.mask) {
    load_mask<VEC>(p.mask, i, m);
  } else {
    load<VEC>(p.y, i, y);
    bias_of<VEC>(p.bias, p.ci, i, b);
  }
  if (p.gk) {
    load<VEC>(p.gk, i, gk);
  } else {
CONTNET_UNROLL
    for (int q = 0; q < VEC; ++q) gk[q] = acc_t(0);
  }
CONTNET_UNROLL
  for (int q = 0; q < VEC; ++q) {
    acc_t gq[kMaxOutputs];
CONTNET_UNROLL
    for (int o = 0; o < kMaxOutputs; ++o) gq[o] = o < e.n_out ? g[o][q] : acc_t(0);
    out[q] = p.mask ? epilogue_grad_y_masked(e, m[q], gq, gk[q]) : epilogue_grad_y(e, y[q], b[q], gq, gk[q]);
  }
  store<VEC>(p.grad_y, i, out);
CONTNET_UNROLL
  for (int j = 0; j < kMaxTerms; ++j) {
    if (j < e.n_terms) {
CONTNET_UNROLL
      for (int q = 0; q < VEC; ++q) {
        acc_t gq[kMaxOutputs];
CONTNET_UNROLL
        for (int o = 0; o < kMaxOutputs; ++o) gq[o] = o < e.n_out ? g[o][q] : acc_t(0);
        out[q] = epilogue_grad_term(e, j, gq);
      }
      store<VEC>(p.grad_term[j], i, out);
    }
  }
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void epilogue_backward_kernel(EpilogueGradPtrs<scalar_t> p, Epilogue<acc_t> e) {
  for_each_element<VEC>(p.numel, [&](auto n, int64_t i) { epilogue_grad_at<decltype(n)::value>(p, e, i); });
}

// Launches kernel<VEC> with 16-byte vectors when every pointer allows them, else VEC = 1.
template <typename scalar_t, typename Launch>
void launch_vectorized(std::initializer_list<const void*> ptrs, int64_t numel, Launch launch) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  bool aligned = true;
  for (const void* q : ptrs) aligned = aligned && (q == nullptr || cuda::aligned16(q));
  if (aligned) launch(std::integral_constant<int, VEC>{}, cuda::grid_for(numel / VEC + 1));
  else launch(std::integral_constant<int, 1>{}, cuda::grid_for(numel));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> rk_epilogue_cuda(const at::Tensor& y_in, const std::optional<at::Tensor>& bias_in,
                                         int64_t act, double scale, at::TensorList bases_in,
                                         at::TensorList terms_in, double h, at::ArrayRef<double> coeffs,
                                         bool return_k, bool return_mask) {
  auto a = epilogue_operands(y_in, bias_in, act, bases_in, terms_in, return_k, return_mask, at::kCUDA);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor &y = a.y, &bias = a.bias;
  const auto &bases = a.bases, &terms = a.terms, &outs = a.outs;
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
    p.k = return_k ? outs[n_out].data_ptr<scalar_t>() : nullptr;
    p.mask = a.mask.defined() ? a.mask.data_ptr<bool>() : nullptr;
    p.ci = a.ci;
    p.numel = y.numel();
    launch_vectorized<scalar_t>(
        {p.y, p.base[0], p.base[1], p.base[2], p.term[0], p.term[1], p.term[2], p.term[3], p.term[4],
         p.term[5], p.term[6], p.term[7], p.out[0], p.out[1], p.out[2], p.k, p.mask},
        p.numel, [&](auto vec, int grid) {
          epilogue_kernel<scalar_t, acc_t, decltype(vec)::value>
              <<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, e);
        });
  });
  return std::move(a.outs);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> rk_epilogue_backward_cuda(
    at::TensorList grads_in, const std::optional<at::Tensor>& grad_k_in, const at::Tensor& y_in,
    const std::optional<at::Tensor>& bias_in, int64_t act, double scale, int64_t n_terms, double h,
    at::ArrayRef<double> coeffs) {
  auto a = epilogue_grad_operands(grads_in, grad_k_in, y_in, bias_in, act, n_terms, at::kCUDA);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor &y = a.y, &mask = a.mask, &bias = a.bias, &gk = a.grad_k, &grad_y = a.grad_y;
  const auto &grads = a.grads, &grad_terms = a.grad_terms;
  const bool has_gk = gk.defined();
  const int n_out = static_cast<int>(grads.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(), "rk_epilogue_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto e = make_epilogue<acc_t>(static_cast<int>(act), scale, n_out, static_cast<int>(n_terms), h, coeffs);
    if (grad_y.numel() == 0) return;
    EpilogueGradPtrs<scalar_t> p{};
    for (int o = 0; o < n_out; ++o) p.g[o] = grads[o].data_ptr<scalar_t>();
    p.gk = has_gk ? gk.data_ptr<scalar_t>() : nullptr;
    p.y = y.defined() ? y.data_ptr<scalar_t>() : nullptr;
    p.mask = mask.defined() ? mask.data_ptr<bool>() : nullptr;
    p.bias = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    p.grad_y = grad_y.data_ptr<scalar_t>();
    for (int64_t j = 0; j < n_terms; ++j) p.grad_term[j] = grad_terms[j].data_ptr<scalar_t>();
    p.ci = a.ci;
    p.numel = grad_y.numel();
    launch_vectorized<scalar_t>(
        {p.g[0], p.g[1], p.g[2], p.gk, p.y, p.mask, p.grad_y, p.grad_term[0], p.grad_term[1], p.grad_term[2],
         p.grad_term[3], p.grad_term[4], p.grad_term[5], p.grad_term[6], p.grad_term[7]},
        p.numel, [&](auto vec, int grid) {
          epilogue_backward_kernel<scalar_t, acc_t, decltype(vec)::value>
              <<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p, e);
        });
  });
  return a.results();
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CUDA, m) {
  m.impl("rk_epilogue", &rk_epilogue_cuda);
  m.impl("rk_epilogue_backward", &rk_epilogue_backward_cuda);
}

}  // namespace contnet
