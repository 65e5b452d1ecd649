// CUDA kernels of the stage-accumulation ops: 16-byte vector loads when every operand is
// contiguous and aligned, a strided path for any other layout; current stream, device
// guard, early return on empty tensors, launch checks.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "contnet/checks.h"
#include "contnet/cuda_utils.cuh"
#include "contnet/layout.h"
#include "contnet/rk_combine.h"

namespace contnet {
namespace {

using cuda::kThreads;
using cuda::Pack;
using cuda::StridedIndex;

// Operand 0..n_out-1 written, the rest read; layout as a TensorIterator orders them.
// Coefficients travel by value in `c`, or, when `dev_coef` is set (learned coefficients, as
// float64), are read on the device as acc_t(h * dev_coef[j]) -- rounded once, as the CPU
// kernel does -- with no host synchronisation.
template <typename scalar_t, typename acc_t>
struct CombineArgs {
  char* ptr[cuda::kMaxOperands];
  Coefs<acc_t> c;
  const double* dev_coef;
  double h;
  int64_t numel;
};

template <typename scalar_t, typename acc_t>
__device__ inline Coefs<acc_t> coefs_of(const CombineArgs<scalar_t, acc_t>& a) {
  Coefs<acc_t> c = a.c;
  if (a.dev_coef != nullptr) {
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j)
      if (j < c.n) c.v[j] = static_cast<acc_t>(a.h * a.dev_coef[j]);
  }
  return c;
}

// Forward: operands (out, x, k_0..k_{n-1}).
template <typename scalar_t, typename acc_t, int VEC>
__global__ void combine_contiguous_kernel(CombineArgs<scalar_t, acc_t> a) {
  using P = Pack<scalar_t, VEC>;
  const Coefs<acc_t> c = coefs_of(a);
  const int64_t nvec = a.numel / VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = first; v < nvec; v += stride) {
    const P xv = reinterpret_cast<const P*>(a.ptr[1])[v];
    acc_t acc[VEC];
CONTNET_UNROLL
    for (int e = 0; e < VEC; ++e) acc[e] = static_cast<acc_t>(xv.val[e]);
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j) {
      if (j < c.n) {
        const P kv = reinterpret_cast<const P*>(a.ptr[2 + j])[v];
CONTNET_UNROLL
        for (int e = 0; e < VEC; ++e) acc[e] = madd(acc[e], c.v[j], static_cast<acc_t>(kv.val[e]));
      }
    }
    P o;
CONTNET_UNROLL
    for (int e = 0; e < VEC; ++e) o.val[e] = static_cast<scalar_t>(acc[e]);
    reinterpret_cast<P*>(a.ptr[0])[v] = o;
  }
  for (int64_t i = nvec * VEC + first; i < a.numel; i += stride) {
    acc_t kv[kMaxTerms];
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j)
      if (j < c.n) kv[j] = static_cast<acc_t>(reinterpret_cast<const scalar_t*>(a.ptr[2 + j])[i]);
    const acc_t xv = static_cast<acc_t>(reinterpret_cast<const scalar_t*>(a.ptr[1])[i]);
    reinterpret_cast<scalar_t*>(a.ptr[0])[i] = static_cast<scalar_t>(combine(xv, kv, c));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void combine_strided_kernel(CombineArgs<scalar_t, acc_t> a, StridedIndex idx) {
  const Coefs<acc_t> c = coefs_of(a);
  const int nops = 2 + c.n;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < a.numel; i += stride) {
    int64_t off[cuda::kMaxOperands];
    idx.offsets(i, nops, off);
    acc_t kv[kMaxTerms];
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j)
      if (j < c.n) kv[j] = static_cast<acc_t>(reinterpret_cast<const scalar_t*>(a.ptr[2 + j])[off[2 + j]]);
    const acc_t xv = static_cast<acc_t>(reinterpret_cast<const scalar_t*>(a.ptr[1])[off[1]]);
    reinterpret_cast<scalar_t*>(a.ptr[0])[off[0]] = static_cast<scalar_t>(combine(xv, kv, c));
  }
}

// Backward: operands (out_0..out_{n-1}, g).
template <typename scalar_t, typename acc_t, int VEC>
__global__ void scale_contiguous_kernel(CombineArgs<scalar_t, acc_t> a) {
  using P = Pack<scalar_t, VEC>;
  const int n = a.c.n;
  const int64_t nvec = a.numel / VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = first; v < nvec; v += stride) {
    const P gv = reinterpret_cast<const P*>(a.ptr[n])[v];
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j) {
      if (j < n) {
        P o;
CONTNET_UNROLL
        for (int e = 0; e < VEC; ++e) o.val[e] = static_cast<scalar_t>(combine_grad(a.c.v[j], static_cast<acc_t>(gv.val[e])));
        reinterpret_cast<P*>(a.ptr[j])[v] = o;
      }
    }
  }
  for (int64_t i = nvec * VEC + first; i < a.numel; i += stride) {
    const acc_t g = static_cast<acc_t>(reinterpret_cast<const scalar_t*>(a.ptr[n])[i]);
    for (int j = 0; j < n; ++j) reinterpret_cast<scalar_t*>(a.ptr[j])[i] = static_cast<scalar_t>(combine_grad(a.c.v[j], g));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void scale_strided_kernel(CombineArgs<scalar_t, acc_t> a, StridedIndex idx) {
  const int n = a.c.n;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < a.numel; i += stride) {
    int64_t off[cuda::kMaxOperands];
    idx.offsets(i, n + 1, off);
    const acc_t g = static_cast<acc_t>(reinterpret_cast<const scalar_t*>(a.ptr[n])[off[n]]);
    for (int j = 0; j < n; ++j)
      reinterpret_cast<scalar_t*>(a.ptr[j])[off[j]] = static_cast<scalar_t>(combine_grad(a.c.v[j], g));
  }
}

// Launch `Contig` on aligned contiguous operands, else `Strided`. Callers pass operands of
// at most cuda::kMaxDims dimensions (see dense_if_deep), so the strided index holds them.
template <typename scalar_t, typename acc_t, typename Contig, typename Strided>
void launch(at::TensorIterator& iter, const Coefs<acc_t>& c, const double* dev_coef, double h,
            Contig contig, Strided strided) {
  CombineArgs<scalar_t, acc_t> a{};
  a.c = c;
  a.dev_coef = dev_coef;
  a.h = h;
  a.numel = iter.numel();
  bool aligned = true;
  for (int op = 0; op < iter.ntensors(); ++op) {
    a.ptr[op] = static_cast<char*>(iter.data_ptr(op));
    aligned = aligned && cuda::aligned16(a.ptr[op]);
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int VEC = 16 / sizeof(scalar_t);
  if (iter.is_contiguous()) {
    if (aligned) {
      contig(std::integral_constant<int, VEC>{}, cuda::grid_for(a.numel / VEC + 1), stream, a);
    } else {
      contig(std::integral_constant<int, 1>{}, cuda::grid_for(a.numel), stream, a);
    }
  } else {
    strided(cuda::grid_for(a.numel), stream, a, cuda::make_strided_index(iter));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// dev_coef: learned coefficients on the device (float64) or undefined.
void combine_pass(const at::Tensor& out, const at::Tensor& base, at::TensorList terms,
                  size_t start, int n, double h, at::ArrayRef<double> coeffs,
                  const at::Tensor& dev_coef = at::Tensor()) {
  at::TensorIteratorConfig cfg;
  cfg.add_output(out).add_const_input(base).resize_outputs(false).check_all_same_dtype(true);
  for (int j = 0; j < n; ++j) cfg.add_const_input(terms[start + j]);
  auto iter = cfg.build();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "rk_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Coefs<acc_t> c{};
    c.n = n;
    const double* dc = nullptr;
    if (dev_coef.defined()) dc = dev_coef.data_ptr<double>() + start;
    else c = make_coefs<acc_t>(h, coeffs, start, n);
    launch<scalar_t, acc_t>(
        iter, c, dc, h,
        [](auto vec, int grid, cudaStream_t s, const CombineArgs<scalar_t, acc_t>& a) {
          combine_contiguous_kernel<scalar_t, acc_t, decltype(vec)::value><<<grid, kThreads, 0, s>>>(a);
        },
        [](int grid, cudaStream_t s, const CombineArgs<scalar_t, acc_t>& a, const StridedIndex& idx) {
          combine_strided_kernel<scalar_t, acc_t><<<grid, kThreads, 0, s>>>(a, idx);
        });
  });
}

template <typename scalar_t>
struct LearnedTerms {
  const scalar_t* in[kMaxTerms];
  scalar_t* out[kMaxTerms];
};

// Flat 1-d views of dense tensors (for operands deeper than the strided index).
std::vector<at::Tensor> dense_views(std::vector<at::Tensor>& dense) {
  for (auto& t : dense) t = t.view({-1});
  return dense;
}

// Shared by the by-value and learned variants (dev_coef: float64 coefficients or undefined).
at::Tensor combine_cuda(const at::Tensor& x, at::TensorList terms, double h,
                        at::ArrayRef<double> coeffs, const at::Tensor& dev_coef) {
  check_device(x, "x", at::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  if (cuda::too_deep(x)) {
    // more dims than the strided index holds: compute on flat copies, return x's layout
    std::vector<at::Tensor> dense;
    for (const auto& t : terms) dense.push_back(t.contiguous());
    at::Tensor out = at::empty_like(x);
    out.copy_(combine_cuda(x.contiguous().view({-1}), dense_views(dense), h, coeffs, dev_coef).view(x.sizes()));
    return out;
  }
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const size_t m = terms.size();
  size_t start = 0;
  do {
    const int n = static_cast<int>(std::min<size_t>(kMaxTerms, m - start));
    combine_pass(out, start == 0 ? x : out, terms, start, n, h, coeffs, dev_coef);
    start += n;
  } while (start < m);
  return out;
}

at::Tensor rk_combine_cuda(const at::Tensor& x, at::TensorList terms, double h,
                           at::ArrayRef<double> coeffs) {
  check_terms(x, "x", terms, "terms", coeffs.size(), "coeffs");
  const auto a = combine_operands(x, terms, h, coeffs);
  const at::Tensor out = combine_cuda(a.x, a.terms, h, a.coeffs, at::Tensor());
  return a.widened ? out.to(x.scalar_type()) : out;
}

at::Tensor rk_combine_learned_cuda(const at::Tensor& x, at::TensorList terms, double h,
                                   const at::Tensor& coeffs) {
  check_terms(x, "x", terms, "terms", terms.size(), "terms");
  check_learned_coeffs(coeffs, x, "x", terms.size());
  return combine_cuda(x, terms, h, {}, coeffs.to(at::kDouble).contiguous());
}

// grad_terms[j] = h c_j g and per-block partial sums, in double, of terms[j] * g over dense
// operands (the CPU kernel also sums in double).
template <typename scalar_t, typename acc_t>
__global__ void learned_backward_kernel(const scalar_t* __restrict__ g, LearnedTerms<scalar_t> t,
                                        const double* __restrict__ coef, double h, int n,
                                        int64_t numel, double* __restrict__ partial) {
  __shared__ double red[kThreads];
  double dot[kMaxTerms];
  acc_t c[kMaxTerms];
CONTNET_UNROLL
  for (int j = 0; j < kMaxTerms; ++j) {
    dot[j] = 0.0;
    c[j] = j < n ? static_cast<acc_t>(h * coef[j]) : acc_t(0);
  }
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const acc_t gi = static_cast<acc_t>(g[i]);
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j) {
      if (j < n) {
        t.out[j][i] = static_cast<scalar_t>(combine_grad(c[j], gi));
        dot[j] += static_cast<double>(static_cast<acc_t>(t.in[j][i]) * gi);
      }
    }
  }
  for (int j = 0; j < n; ++j) {
    red[threadIdx.x] = dot[j];
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
      if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[int64_t(blockIdx.x) * n + j] = red[0];
    __syncthreads();
  }
}

std::tuple<std::vector<at::Tensor>, at::Tensor> rk_combine_learned_backward_cuda(
    const at::Tensor& grad, at::TensorList terms, double h, const at::Tensor& coeffs) {
  check_terms(grad, "grad", terms, "terms", terms.size(), "terms");
  check_learned_coeffs(coeffs, grad, "grad", terms.size());
  check_device(grad, "grad", at::kCUDA);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int n = static_cast<int>(terms.size());
  const auto fmt = dense_format(grad);
  const at::Tensor g = in_format(grad, fmt);
  std::vector<at::Tensor> ts, outs;
  for (const auto& t : terms) ts.push_back(in_format(t, fmt)), outs.push_back(at::empty_like(g));
  const at::Tensor coef = coeffs.to(at::kDouble).contiguous();
  const int64_t numel = g.numel();
  const int grid = cuda::grid_for(numel);
  at::Tensor partial = at::zeros({grid, std::max(n, 1)}, g.options().dtype(at::kDouble));
  if (numel > 0 && n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "rk_combine_learned_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      LearnedTerms<scalar_t> t{};
      for (int j = 0; j < n; ++j) t.in[j] = ts[j].data_ptr<scalar_t>(), t.out[j] = outs[j].data_ptr<scalar_t>();
      learned_backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          g.data_ptr<scalar_t>(), t, coef.data_ptr<double>(), h, n, numel, partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor dots = partial.sum(0).narrow(0, 0, n).mul(h).to(coeffs.scalar_type());
  return {outs, dots};
}

std::vector<at::Tensor> rk_combine_backward_cuda(const at::Tensor& grad, double h,
                                                 at::ArrayRef<double> coeffs) {
  check_grad(grad);
  check_device(grad, "grad", at::kCUDA);
  const c10::cuda::CUDAGuard guard(grad.device());
  if (cuda::too_deep(grad)) {
    auto flat = rk_combine_backward_cuda(grad.contiguous().view({-1}), h, coeffs);
    std::vector<at::Tensor> outs;
    for (auto& o : flat) outs.push_back(at::empty_like(grad).copy_(o.view(grad.sizes())));
    return outs;
  }
  std::vector<at::Tensor> outs;
  for (size_t j = 0; j < coeffs.size(); ++j) outs.push_back(at::empty_like(grad));
  if (grad.numel() == 0) return outs;
  for (size_t start = 0; start < coeffs.size(); start += kMaxTerms) {
    const int n = static_cast<int>(std::min<size_t>(kMaxTerms, coeffs.size() - start));
    at::TensorIteratorConfig cfg;
    for (int j = 0; j < n; ++j) cfg.add_output(outs[start + j]);
    cfg.add_const_input(grad).resize_outputs(false).check_all_same_dtype(true);
    auto iter = cfg.build();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rk_combine_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch<scalar_t, acc_t>(
          iter, make_coefs<acc_t>(h, coeffs, start, n), nullptr, h,
          [](auto vec, int grid, cudaStream_t s, const CombineArgs<scalar_t, acc_t>& a) {
            scale_contiguous_kernel<scalar_t, acc_t, decltype(vec)::value><<<grid, kThreads, 0, s>>>(a);
          },
          [](int grid, cudaStream_t s, const CombineArgs<scalar_t, acc_t>& a, const StridedIndex& idx) {
            scale_strided_kernel<scalar_t, acc_t><<<grid, kThreads, 0, s>>>(a, idx);
          });
    });
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CUDA, m) {
  m.impl("rk_combine", &rk_combine_cuda);
  m.impl("rk_combine_backward", &rk_combine_backward_cuda);
  m.impl("rk_combine_learned", &rk_combine_learned_cuda);
  m.impl("rk_combine_learned_backward", &rk_combine_learned_backward_cuda);
}

}  // namespace contnet
