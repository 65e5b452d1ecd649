// Per-element arithmetic of the fused stage epilogue, shared by CPU and CUDA:
//
//   k      = scale * act(y + bias_c)
//   out_o  = base_o + sum_j c[o][j] * term_j + c[o][kK] * k        (o < n_out)
//
// and of its backward, given the gradients g_o of the outputs (and g_k of k):
//
//   gk     = g_k + sum_o c[o][kK] * g_o
//   grad_y = gk * scale * act'(y + bias_c)      (relu: from the mask y + bias_c > 0)
//   grad_term_j = sum_o c[o][j] * g_o
//
// Coefficients are pre-multiplied by the step h. A zero coefficient (of a term, or of k in
// an output) is skipped in the forward and in the backward alike: its operand is not read
// there, so a non-finite value with a zero coefficient has no effect.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>

#include "contnet/activations.h"
#include "contnet/checks.h"
#include "contnet/macros.h"
#include "contnet/rk_combine.h"

namespace contnet {

constexpr int kMaxOutputs = 3;
constexpr int kK = kMaxTerms;  // column of k's coefficient

template <typename acc_t>
struct Epilogue {
  acc_t c[kMaxOutputs][kMaxTerms + 1];
  acc_t scale;
  int act;
  int n_out;
  int n_terms;
};

// ---- The formulas, for an activation and term counts known at compile time. The CPU
// loops call them on runs of elements (zero coefficients dropped before); the runtime forms
// below, which the CUDA kernels call per element, are built from them.

// k = scale * act(z), z = y + bias_c
template <int ACT, typename acc_t>
C10_HOST_DEVICE inline acc_t tail_forward(acc_t scale, acc_t z) {
  return scale * act_forward_t<ACT>(z);
}

// d loss / d z from gk, the gradient reaching k: gk * scale * act'(z)
template <int ACT, typename acc_t>
C10_HOST_DEVICE inline acc_t tail_backward(acc_t gk, acc_t scale, acc_t z) {
  return act_backward_t<ACT>(gk * scale, z);
}

// relu's mask of z: what its backward reads (relu_pass(z) ? g : 0 is
// act_backward_t<kRelu>(g, z), NaN included)
template <typename acc_t>
C10_HOST_DEVICE inline bool relu_pass(acc_t z) {
  return !(z <= acc_t(0));
}

// relu's tail_backward from its mask: the product formed first, then selected (a select
// the CPU vectorises)
template <typename acc_t>
C10_HOST_DEVICE inline acc_t tail_backward_masked(bool pass, acc_t gk, acc_t scale) {
  const acc_t v = gk * scale;
  return pass ? v : acc_t(0);
}

// out = base + sum_{j<N} c_j t_j (+ ck k with WITH_K): an output, its zero coefficients
// dropped (k's: WITH_K false). The sums of the backward, gk = g_k + sum_o c_o g_o and
// grad_term = sum_o c_o g_o, are combine_n's (rk_combine.h).
template <int N, bool WITH_K, typename acc_t>
C10_HOST_DEVICE inline acc_t output_n(acc_t base, const acc_t* t, const acc_t* c, acc_t ck, acc_t k) {
  const acc_t acc = combine_n<N>(base, t, c);
  if constexpr (WITH_K) {
    return madd(acc, ck, k);
  } else {
    return acc;
  }
}

// ---- Runtime forms: the activation, the counts and the zero coefficients read from an
// Epilogue.

template <typename acc_t>
C10_HOST_DEVICE inline acc_t epilogue_k(const Epilogue<acc_t>& e, acc_t y, acc_t b) {
  CONTNET_WITH_ACT(e.act, A, return tail_forward<A>(e.scale, y + b))
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t epilogue_out(const Epilogue<acc_t>& e, int o, acc_t base,
                                          const acc_t* term, acc_t k) {
  acc_t acc = base;
  CONTNET_UNROLL
  for (int j = 0; j < kMaxTerms; ++j)
    if (j < e.n_terms && e.c[o][j] != acc_t(0)) acc = madd(acc, e.c[o][j], term[j]);
  return e.c[o][kK] != acc_t(0) ? madd(acc, e.c[o][kK], k) : acc;
}

// d loss / d k from the upstream gradients (g: n_out values, gk: gradient of k itself).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t epilogue_grad_k(const Epilogue<acc_t>& e, const acc_t* g, acc_t gk) {
  CONTNET_UNROLL
  for (int o = 0; o < kMaxOutputs; ++o)
    if (o < e.n_out && e.c[o][kK] != acc_t(0)) gk = madd(gk, e.c[o][kK], g[o]);
  return gk;
}

// d loss / d y.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t epilogue_grad_y(const Epilogue<acc_t>& e, acc_t y, acc_t b,
                                             const acc_t* g, acc_t gk) {
  const acc_t total = epilogue_grad_k(e, g, gk);
  CONTNET_WITH_ACT(e.act, A, return tail_backward<A>(total, e.scale, y + b))
}

// d loss / d y for relu, from the mask.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t epilogue_grad_y_masked(const Epilogue<acc_t>& e, bool pass,
                                                    const acc_t* g, acc_t gk) {
  return tail_backward_masked(pass, epilogue_grad_k(e, g, gk), e.scale);
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t epilogue_grad_term(const Epilogue<acc_t>& e, int j, const acc_t* g) {
  acc_t acc = acc_t(0);
  CONTNET_UNROLL
  for (int o = 0; o < kMaxOutputs; ++o)
    if (o < e.n_out && e.c[o][j] != acc_t(0)) acc = madd(acc, e.c[o][j], g[o]);
  return acc;
}

// Host side: coefficients from a row-major (n_out x (n_terms + 1)) list, times h; the
// settings checked (check_epilogue_settings).
template <typename acc_t>
inline Epilogue<acc_t> make_epilogue(int act, double scale, int n_out, int n_terms, double h,
                                     c10::ArrayRef<double> coeffs) {
  check_epilogue_settings(act, n_out, n_terms, coeffs.size());
  Epilogue<acc_t> e{};
  e.act = act;
  e.scale = static_cast<acc_t>(scale);
  e.n_out = n_out;
  e.n_terms = n_terms;
  for (int o = 0; o < n_out; ++o) {
    for (int j = 0; j < n_terms; ++j) e.c[o][j] = static_cast<acc_t>(h * coeffs[o * (n_terms + 1) + j]);
    e.c[o][kK] = static_cast<acc_t>(h * coeffs[o * (n_terms + 1) + n_terms]);
  }
  return e;
}

}  // namespace contnet
