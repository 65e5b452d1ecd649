// CUDA kernel of the time-interpolated weight lookup: one launch for every stage time and
// every tensor (up to kMaxInterpTensors per launch).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "contnet/basis_interp.h"
#include "contnet/checks.h"
#include "contnet/cuda_utils.cuh"

namespace contnet {

std::vector<at::Tensor> basis_interp_outputs(const at::Tensor& phi, at::TensorList thetas);
at::Tensor node_major_or_contiguous(const at::Tensor& t);

namespace {

template <typename scalar_t>
struct InterpBatch {
  const scalar_t* theta[kMaxInterpTensors];
  scalar_t* out[kMaxInterpTensors];
  int64_t m[kMaxInterpTensors];      // elements per node
  int64_t begin[kMaxInterpTensors + 1];  // prefix sums of S * m
  int n;
};

template <typename scalar_t, typename acc_t>
__global__ void interp_kernel(const double* __restrict__ phi, int64_t K, InterpBatch<scalar_t> b) {
  const int64_t total = b.begin[b.n];
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    int j = 0;
    while (idx >= b.begin[j + 1]) ++j;
    const int64_t local = idx - b.begin[j];
    const int64_t s = local / b.m[j], i = local % b.m[j];
    b.out[j][local] = static_cast<scalar_t>(interp_element<acc_t>(phi + s * K, K, b.theta[j], b.m[j], i));
  }
}

std::vector<at::Tensor> basis_interp_cuda(const at::Tensor& phi_in, at::TensorList thetas_in) {
  std::vector<at::Tensor> outs = basis_interp_outputs(phi_in, thetas_in);
  check_device(phi_in, "phi", at::kCUDA);
  const c10::cuda::CUDAGuard guard(phi_in.device());
  const at::Tensor phi = phi_in.contiguous();
  const int64_t S = phi.size(0), K = phi.size(1);
  std::vector<at::Tensor> thetas;
  for (const auto& t : thetas_in) thetas.push_back(node_major_or_contiguous(t));
  // one launch per run of same-dtype tensors, at most kMaxInterpTensors each
  size_t start = 0;
  while (start < thetas.size()) {
    size_t end = start + 1;
    while (end < thetas.size() && end - start < static_cast<size_t>(kMaxInterpTensors) &&
           thetas[end].scalar_type() == thetas[start].scalar_type())
      ++end;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, thetas[start].scalar_type(), "basis_interp_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      InterpBatch<scalar_t> b{};
      b.n = static_cast<int>(end - start);
      b.begin[0] = 0;
      for (int j = 0; j < b.n; ++j) {
        const auto& t = thetas[start + j];
        b.theta[j] = t.data_ptr<scalar_t>();
        b.out[j] = outs[start + j].data_ptr<scalar_t>();
        b.m[j] = K ? t.numel() / K : 0;
        b.begin[j + 1] = b.begin[j] + S * b.m[j];
      }
      for (int j = b.n; j < kMaxInterpTensors; ++j) b.begin[j + 1] = b.begin[b.n];
      if (b.begin[b.n] == 0) return;
      interp_kernel<scalar_t, acc_t><<<cuda::grid_for(b.begin[b.n]), cuda::kThreads, 0,
                                       c10::cuda::getCurrentCUDAStream()>>>(phi.data_ptr<double>(), K, b);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    start = end;
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CUDA, m) { m.impl("basis_interp", &basis_interp_cuda); }

}  // namespace contnet
