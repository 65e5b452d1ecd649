// CPU kernel of the time-interpolated weight lookup: every output row s of every tensor is
// a combination of the basis nodes with the coefficients phi[s, :].
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "contnet/basis_interp.h"
#include "contnet/checks.h"
#include "contnet/macros.h"

namespace contnet {

// Shared with the CUDA file: checks and the outputs (S, *theta.shape[1:]): theta's strides
// with dim 0 of stride M where theta is node-major (below), else contiguous.
std::vector<at::Tensor> basis_interp_outputs(const at::Tensor& phi, at::TensorList thetas);
// `t` itself when each node t[k] is one dense block of M = numel / K elements at offset
// k * M, all nodes in one layout (node-major: the kernels combine the blocks elementwise,
// whatever the layout inside them, e.g. channels_last filter banks), else a contiguous copy.
at::Tensor node_major_or_contiguous(const at::Tensor& t);

namespace {

constexpr int64_t kChunk = 2048;

// buf[i] = interp_add(buf[i], w, theta[i]) over a run (vectorised): one node's share of
// interp_element's sum, node by node in ascending order as it sums
template <typename scalar_t, typename acc_t>
CONTNET_CPU_CLONES void axpy_run(acc_t* __restrict__ buf, acc_t w, const scalar_t* __restrict__ theta, int64_t len) {
  for (int64_t i = 0; i < len; ++i) buf[i] = interp_add(buf[i], w, static_cast<acc_t>(theta[i]));
}

std::vector<at::Tensor> basis_interp_cpu(const at::Tensor& phi_in, at::TensorList thetas_in) {
  std::vector<at::Tensor> outs = basis_interp_outputs(phi_in, thetas_in);
  check_device(phi_in, "phi", at::kCPU);
  const at::Tensor phi = phi_in.contiguous();
  const int64_t S = phi.size(0), K = phi.size(1);
  const double* pp = phi.data_ptr<double>();
  // the non-zero coefficients of every row (local bases have one or two)
  std::vector<std::vector<std::pair<int64_t, double>>> nz(S);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t k = 0; k < K; ++k)
      if (pp[s * K + k] != 0.0) nz[s].emplace_back(k, pp[s * K + k]);
  for (size_t j = 0; j < thetas_in.size(); ++j) {
    const at::Tensor theta = node_major_or_contiguous(thetas_in[j]);
    const int64_t M = theta.numel() / K;
    if (S * M == 0) continue;
    const int64_t chunks = (M + kChunk - 1) / kChunk;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, theta.scalar_type(), "basis_interp_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* tp = theta.data_ptr<scalar_t>();
      scalar_t* op = outs[j].data_ptr<scalar_t>();
      at::parallel_for(0, S * chunks, 1, [&](int64_t b, int64_t e) {
        alignas(64) acc_t buf[kChunk];
        for (int64_t idx = b; idx < e; ++idx) {
          const int64_t s = idx / chunks, begin = (idx % chunks) * kChunk, len = std::min(kChunk, M - begin);
          std::fill(buf, buf + len, acc_t(0));
          for (const auto& [k, w] : nz[s]) {
            const acc_t wa = static_cast<acc_t>(w);  // may underflow to zero below float64
            if (wa != acc_t(0)) axpy_run<scalar_t, acc_t>(buf, wa, tp + k * M + begin, len);
          }
          scalar_t* out = op + s * M + begin;
          for (int64_t i = 0; i < len; ++i) out[i] = static_cast<scalar_t>(buf[i]);
        }
      });
    });
  }
  return outs;
}

// The strides of a node-major `t` (see node_major_or_contiguous), or nothing: dim 0 of
// stride M (any stride when it has one node), the other dims dense in some order.
std::optional<std::vector<int64_t>> node_major_strides(const at::Tensor& t) {
  if (t.dim() < 1) return std::nullopt;
  int64_t m = 1;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims 1.. of size > 1
  for (int64_t d = 1; d < t.dim(); ++d) {
    m *= t.size(d);
    if (t.size(d) != 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  if (t.size(0) != 1 && t.stride(0) != m) return std::nullopt;
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return std::nullopt;
    expected *= size;
  }
  std::vector<int64_t> strides(t.strides().begin(), t.strides().end());
  strides[0] = m;
  return strides;
}

}  // namespace

at::Tensor node_major_or_contiguous(const at::Tensor& t) {
  return node_major_strides(t).has_value() ? t : t.contiguous();
}

std::vector<at::Tensor> basis_interp_outputs(const at::Tensor& phi, at::TensorList thetas) {
  check_basis_interp(phi, thetas);
  std::vector<at::Tensor> outs;
  for (const auto& t : thetas) {
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    shape[0] = phi.size(0);
    const auto strides = node_major_strides(t);
    outs.push_back(strides ? at::empty_strided(shape, *strides, t.options())
                           : at::empty(shape, t.options().memory_format(at::MemoryFormat::Contiguous)));
  }
  return outs;
}

TORCH_LIBRARY_IMPL(contnet, CPU, m) { m.impl("basis_interp", &basis_interp_cpu); }

}  // namespace contnet
