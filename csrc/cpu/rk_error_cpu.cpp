// CPU kernel of the embedded error estimate (contnet/rk_error.h): one pass over the step's
// operands writes x_next (unless given) and sums each chunk's squared scaled errors; the
// chunks of a sample are then summed in order. Work is split over threads by chunk.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "contnet/checks.h"
#include "contnet/layout.h"
#include "contnet/rk_error.h"

namespace contnet {
namespace {

// Elements of a sample one task takes; a sample's partial sums are added in chunk order.
constexpr int64_t kChunk = 1 << 14;
// Elements the loop below computes at once, in buffers that stay in L1.
constexpr int64_t kBlock = 256;
constexpr int kLanes = 8;

// Sum of r^2 over `len` contiguous elements (writing x_next when `xn_out`), computed block
// by block: each sum over the terms runs over a block at a time, so that it vectorises, and
// the squares go to kLanes running sums, lane l taking the elements i = l mod kLanes (each
// lane's order fixed: deterministic).
template <typename scalar_t, typename acc_t>
CONTNET_CPU_CLONES acc_t error_run(scalar_t* xn_out, const scalar_t* x, const scalar_t* xn_in,
                                   const scalar_t* const* k, const ErrorCoefs<acc_t>& c, int64_t len) {
  alignas(64) acc_t xn[kBlock], err[kBlock], xa[kBlock];
  acc_t lane[kLanes] = {};
  for (int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const int64_t m = std::min(kBlock, len - i0);
    for (int64_t i = 0; i < m; ++i) xa[i] = static_cast<acc_t>(x[i0 + i]), err[i] = acc_t(0);
    if (xn_out != nullptr) {
      for (int64_t i = 0; i < m; ++i) xn[i] = xa[i];
      for (int j = 0; j < c.nb; ++j) {
        const scalar_t* __restrict__ kj = k[c.bi[j]] + i0;
        const acc_t cj = c.b[j];
        for (int64_t i = 0; i < m; ++i) xn[i] = madd(xn[i], cj, static_cast<acc_t>(kj[i]));
      }
      for (int64_t i = 0; i < m; ++i) {
        const scalar_t v = static_cast<scalar_t>(xn[i]);
        xn_out[i0 + i] = v;
        xn[i] = static_cast<acc_t>(v);
      }
    } else {
      for (int64_t i = 0; i < m; ++i) xn[i] = static_cast<acc_t>(xn_in[i0 + i]);
    }
    for (int j = 0; j < c.ne; ++j) {
      const scalar_t* __restrict__ kj = k[c.ei[j]] + i0;
      const acc_t cj = c.e[j];
      for (int64_t i = 0; i < m; ++i) err[i] = madd(err[i], cj, static_cast<acc_t>(kj[i]));
    }
    for (int64_t i = 0; i < m; ++i) {
      const acc_t r = error_ratio(err[i], xa[i], xn[i], c.rtol, c.atol);
      err[i] = r * r;
    }
    for (int64_t i = m; i % kLanes != 0; ++i) err[i] = acc_t(0);
    for (int64_t i = 0; i < m; i += kLanes)
      for (int l = 0; l < kLanes; ++l) lane[l] += err[i + l];
  }
  acc_t s = acc_t(0);
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

void error_cpu(ErrorOperands& a, double h, c10::ArrayRef<double> b, c10::ArrayRef<double> e,
               double rtol, double atol) {
  if (a.samples == 0) return;
  if (a.m == 0) {
    a.sq.zero_();
    return;
  }
  const int64_t per = (a.m + kChunk - 1) / kChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "rk_error_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto c = make_error_coefs<acc_t>(h, a.computed ? b : c10::ArrayRef<double>{}, e, rtol, atol,
                                           a.x.scalar_type() == at::kDouble);
    const scalar_t* k[kMaxTerms];
    for (size_t j = 0; j < a.terms.size(); ++j) k[j] = a.terms[j].data_ptr<scalar_t>();
    const scalar_t* x = a.x.data_ptr<scalar_t>();
    scalar_t* xn = a.x_next.data_ptr<scalar_t>();
    std::vector<acc_t> partial(static_cast<size_t>(a.samples * per));
    at::parallel_for(0, a.samples * per, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task / per, start = s * a.m + (task % per) * kChunk;
        const int64_t len = std::min(kChunk, (s + 1) * a.m - start);
        const scalar_t* kk[kMaxTerms];
        for (size_t j = 0; j < a.terms.size(); ++j) kk[j] = k[j] + start;
        partial[task] = error_run<scalar_t, acc_t>(a.computed ? xn + start : nullptr, x + start,
                                                   a.computed ? nullptr : xn + start, kk, c, len);
      }
    });
    using norm_t = std::conditional_t<std::is_same_v<acc_t, double>, double, float>;
    norm_t* sq = a.sq.data_ptr<norm_t>();
    for (int64_t s = 0; s < a.samples; ++s) {
      acc_t total = acc_t(0);
      for (int64_t p = 0; p < per; ++p) total += partial[s * per + p];
      sq[s] = static_cast<norm_t>(total / static_cast<acc_t>(a.m));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rk_step_error_cpu(const at::Tensor& x, at::TensorList terms, double h,
                                                     at::ArrayRef<double> b, at::ArrayRef<double> e, double rtol,
                                                     double atol) {
  auto a = error_operands(x, std::nullopt, terms, &b, e, rtol, atol, at::kCPU);
  error_cpu(a, h, b, e, rtol, atol);
  return {a.x_next, a.sq};
}

at::Tensor rk_error_norm_cpu(const at::Tensor& x, const at::Tensor& x_next, at::TensorList terms, double h,
                             at::ArrayRef<double> e, double rtol, double atol) {
  auto a = error_operands(x, x_next, terms, nullptr, e, rtol, atol, at::kCPU);
  error_cpu(a, h, {}, e, rtol, atol);
  return a.sq;
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CPU, m) {
  m.impl("rk_step_error", &rk_step_error_cpu);
  m.impl("rk_error_norm", &rk_error_norm_cpu);
}

}  // namespace contnet
