// Per-element arithmetic of the time-interpolated weight lookup, shared by CPU and CUDA:
//
//   out[s, i] = sum_k phi[s, k] * theta[k, i]       (phi: S x K, theta: K x M, out: S x M)
//
// Its backward is the same lookup with phi transposed (K x S), scattering the stage
// gradients into the basis nodes. Coefficients that are zero in the accumulation type
// (most of them, for local bases) are skipped; the CPU kernel adds the same products in the same (ascending k) order, a run of
// elements at a time.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace contnet {

constexpr int kMaxInterpTensors = 8;

// One node's share: acc + p * theta (for p nonzero in the accumulation type; a zero p,
// also one that underflows, is skipped by the callers).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t interp_add(acc_t acc, acc_t p, acc_t theta) {
  return acc + p * theta;
}

template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t interp_element(const double* phi_row, int64_t K,
                                            const scalar_t* theta, int64_t M, int64_t i) {
  acc_t acc = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    const acc_t p = static_cast<acc_t>(phi_row[k]);  // zero also when it underflows
    if (p != acc_t(0)) acc = interp_add(acc, p, static_cast<acc_t>(theta[k * M + i]));
  }
  return acc;
}

}  // namespace contnet
