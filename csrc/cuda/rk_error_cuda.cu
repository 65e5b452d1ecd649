// CUDA kernel of the embedded error estimate (contnet/rk_error.h): each block takes one chunk
// of one sample, writes x_next there (unless given) and reduces the chunk's squared scaled
// errors in shared memory in a fixed order; the chunks of a sample are then summed on the
// device. No host synchronisation: the caller reads the result once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "contnet/checks.h"
#include "contnet/cuda_utils.cuh"
#include "contnet/layout.h"
#include "contnet/rk_error.h"

namespace contnet {
namespace {

using cuda::kThreads;

// Elements per thread in one chunk: a block reduces kThreads * kItems elements.
constexpr int kItems = 8;
constexpr int64_t kChunk = int64_t(kThreads) * kItems;

template <typename scalar_t>
struct ErrorPtrs {
  const scalar_t* x;
  const scalar_t* xn_in;  // null when x_next is computed
  scalar_t* xn_out;       // null when x_next is given
  const scalar_t* k[kMaxTerms];
};

template <typename scalar_t, typename acc_t>
__global__ void error_kernel(ErrorPtrs<scalar_t> p, ErrorCoefs<acc_t> c, int64_t m, int64_t per,
                             acc_t* __restrict__ partial) {
  __shared__ acc_t red[kThreads];
  const int64_t s = blockIdx.x / per;
  const int64_t begin = s * m + (blockIdx.x % per) * kChunk;
  const int64_t end = min(begin + kChunk, (s + 1) * m);
  acc_t sum = acc_t(0);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const acc_t xv = static_cast<acc_t>(p.x[i]);
    acc_t xn;
    if (p.xn_out != nullptr) {
      acc_t acc = xv;
CONTNET_UNROLL
      for (int j = 0; j < kMaxTerms; ++j)
        if (j < c.nb) acc = madd(acc, c.b[j], static_cast<acc_t>(p.k[c.bi[j]][i]));
      const scalar_t v = static_cast<scalar_t>(acc);
      p.xn_out[i] = v;
      xn = static_cast<acc_t>(v);
    } else {
      xn = static_cast<acc_t>(p.xn_in[i]);
    }
    acc_t err = acc_t(0);
CONTNET_UNROLL
    for (int j = 0; j < kMaxTerms; ++j)
      if (j < c.ne) err = madd(err, c.e[j], static_cast<acc_t>(p.k[c.ei[j]][i]));
    const acc_t r = error_ratio(err, xv, xn, c.rtol, c.atol);
    sum += r * r;
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

void error_cuda(ErrorOperands& a, double h, c10::ArrayRef<double> b, c10::ArrayRef<double> e, double rtol,
                double atol) {
  if (a.samples == 0) return;
  if (a.m == 0) {
    a.sq.zero_();
    return;
  }
  const int64_t per = (a.m + kChunk - 1) / kChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "rk_error_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto c = make_error_coefs<acc_t>(h, a.computed ? b : c10::ArrayRef<double>{}, e, rtol, atol,
                                           a.x.scalar_type() == at::kDouble);
    ErrorPtrs<scalar_t> p{};
    p.x = a.x.data_ptr<scalar_t>();
    if (a.computed) p.xn_out = a.x_next.data_ptr<scalar_t>();
    else p.xn_in = a.x_next.data_ptr<scalar_t>();
    for (size_t j = 0; j < a.terms.size(); ++j) p.k[j] = a.terms[j].data_ptr<scalar_t>();
    // acc_t is the type of sq (float64 or float32): the chunks' sums are added in it
    at::Tensor partial = at::empty({a.samples, per}, a.sq.options());
    error_kernel<scalar_t, acc_t><<<static_cast<unsigned>(a.samples * per), kThreads, 0,
                                    c10::cuda::getCurrentCUDAStream()>>>(p, c, a.m, per,
                                                                         partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::sum_out(a.sq, partial, {1}).div_(static_cast<double>(a.m));
  });
}

std::tuple<at::Tensor, at::Tensor> rk_step_error_cuda(const at::Tensor& x, at::TensorList terms, double h,
                                                      at::ArrayRef<double> b, at::ArrayRef<double> e, double rtol,
                                                      double atol) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto a = error_operands(x, std::nullopt, terms, &b, e, rtol, atol, at::kCUDA);
  error_cuda(a, h, b, e, rtol, atol);
  return {a.x_next, a.sq};
}

at::Tensor rk_error_norm_cuda(const at::Tensor& x, const at::Tensor& x_next, at::TensorList terms, double h,
                              at::ArrayRef<double> e, double rtol, double atol) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto a = error_operands(x, x_next, terms, nullptr, e, rtol, atol, at::kCUDA);
  error_cuda(a, h, {}, e, rtol, atol);
  return a.sq;
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CUDA, m) {
  m.impl("rk_step_error", &rk_step_error_cuda);
  m.impl("rk_error_norm", &rk_error_norm_cuda);
}

}  // namespace contnet
