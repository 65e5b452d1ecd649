// Per-element arithmetic of the stage-accumulation ops, shared by the CPU loops and the
// CUDA kernels so that both run the same formulas.
//
//   rk_combine:           out   = x + sum_j coef_j * k_j        (coef_j = h * c_j)
//   rk_combine backward:  dk_j  = coef_j * g,  dx = g
//
// `acc_t` is the accumulation type (float for float16/bfloat16, else the scalar type).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>

#include "contnet/macros.h"

namespace contnet {

// Most terms (or outputs) one pass over memory takes; longer sums run in several passes.
constexpr int kMaxTerms = 8;

// Coefficients travelling by value to a kernel (already multiplied by the step h).
template <typename acc_t>
struct Coefs {
  acc_t v[kMaxTerms];
  int n;
};

template <typename acc_t>
C10_HOST_DEVICE inline acc_t madd(acc_t acc, acc_t coef, acc_t k) {
  return acc + coef * k;
}

// d out / d k_j times the output's gradient g: coef_j * g (the backward of every term).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t combine_grad(acc_t coef, acc_t g) {
  return coef * g;
}

// x + sum_{j < N} coef_j * k_j for a term count known at compile time.
template <int N, typename acc_t>
C10_HOST_DEVICE inline acc_t combine_n(acc_t x, const acc_t* k, const acc_t* coef) {
  acc_t acc = x;
  CONTNET_UNROLL
  for (int j = 0; j < N; ++j) acc = madd(acc, coef[j], k[j]);
  return acc;
}

// x + sum_{j < c.n} coef_j * k_j, accumulated left to right.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t combine(acc_t x, const acc_t* k, const Coefs<acc_t>& c) {
  acc_t acc = x;
CONTNET_UNROLL
  for (int j = 0; j < kMaxTerms; ++j) {
    if (j < c.n) acc = madd(acc, c.v[j], k[j]);
  }
  return acc;
}

// Host side: whether a step coefficient `hc = h * c` is zero in the accumulation type
// (float below double; a tiny one underflows). Such a term is skipped, forward and backward.
inline bool coefficient_vanishes(double hc, bool in_double) {
  return in_double ? hc == 0.0 : static_cast<float>(hc) == 0.0f;
}

// Host side: coefficients `h * coeffs[start + j]` for j < n, in the accumulation type.
template <typename acc_t>
inline Coefs<acc_t> make_coefs(double h, c10::ArrayRef<double> coeffs, size_t start, int n) {
  Coefs<acc_t> c{};
  c.n = n;
  for (int j = 0; j < n; ++j) c.v[j] = static_cast<acc_t>(h * coeffs[start + j]);
  return c;
}

}  // namespace contnet
