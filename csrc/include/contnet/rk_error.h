// Per-element arithmetic of the embedded error estimate of an adaptive step, shared by the
// CPU loop and the CUDA kernel so that both run the same formulas.
//
//   x_next = x + sum_j cb_j k_j          (cb_j = h b_j; or x_next given)
//   err    = sum_j ce_j k_j              (ce_j = h (b_j - bhat_j))
//   r      = err / (rtol max(|x|, |x_next|) + atol), 0 where err == 0
//   sq[s]  = mean over the elements of sample s (dim 0) of r^2
//
// `acc_t` is the accumulation type (float for float16/bfloat16, else the scalar type); the
// state's new value is rounded to the storage type before it enters the scale, so that the
// error of a step whose x_next was computed here equals the error of one given x_next.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <vector>

#include "contnet/macros.h"
#include "contnet/rk_combine.h"

namespace contnet {

// The step's coefficients by value: the terms entering x_next (`b`, indices `bi`) and the
// error (`e`, indices `ei`) into the op's term list; terms whose coefficient vanishes are
// left out of each sum, so a non-finite term with a zero coefficient has no effect.
template <typename acc_t>
struct ErrorCoefs {
  acc_t b[kMaxTerms];
  acc_t e[kMaxTerms];
  int bi[kMaxTerms];
  int ei[kMaxTerms];
  int nb, ne;
  acc_t rtol, atol;
};

// max(a, b) that propagates NaN, as torch.maximum does; selects, not branches, so that a
// loop over elements vectorises.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t nan_max(acc_t a, acc_t b) {
  acc_t m = a > b ? a : b;
  m = b != b ? b : m;
  return a != a ? a : m;
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t magnitude(acc_t a) {
  return a < acc_t(0) ? -a : a;
}

// The scaled error of one element: err over rtol max(|x|, |x_next|) + atol; a zero error is
// zero whatever the scale (a zero state with atol = 0 has a zero scale).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t error_ratio(acc_t err, acc_t x, acc_t xn, acc_t rtol, acc_t atol) {
  const acc_t r = err / (rtol * nan_max(magnitude(x), magnitude(xn)) + atol);
  return err == acc_t(0) ? acc_t(0) : r;
}

// Host side: the coefficients h * b_j and h * e_j that do not vanish in the accumulation type
// (b empty: x_next is given).
template <typename acc_t>
inline ErrorCoefs<acc_t> make_error_coefs(double h, c10::ArrayRef<double> b, c10::ArrayRef<double> e,
                                          double rtol, double atol, bool in_double) {
  ErrorCoefs<acc_t> c{};
  for (size_t j = 0; j < b.size(); ++j)
    if (!coefficient_vanishes(h * b[j], in_double)) {
      c.b[c.nb] = static_cast<acc_t>(h * b[j]);
      c.bi[c.nb++] = static_cast<int>(j);
    }
  for (size_t j = 0; j < e.size(); ++j)
    if (!coefficient_vanishes(h * e[j], in_double)) {
      c.e[c.ne] = static_cast<acc_t>(h * e[j]);
      c.ei[c.ne++] = static_cast<int>(j);
    }
  c.rtol = static_cast<acc_t>(rtol);
  c.atol = static_cast<acc_t>(atol);
  return c;
}

}  // namespace contnet
