// Activations of the residual unit's tail and their derivatives, for the fused epilogue.
// The codes match contnet/ops.py (ACT_CODES); one definition serves CPU and CUDA.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace contnet {

enum Act : int { kIdentity = 0, kRelu = 1, kTanh = 2, kGelu = 3, kSilu = 4, kSoftplus = 5 };
constexpr int kNumActs = 6;

// exp, tanh, erf, log1p in T's own precision: CUDA's overloads on the device, <cmath>'s on
// the host (whose global-namespace C functions would compute float in double).
#if defined(__CUDA_ARCH__)
#define CONTNET_MATH(f) ::f
#else
#define CONTNET_MATH(f) std::f
#endif

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T z) {
  return T(1) / (T(1) + CONTNET_MATH(exp)(-z));
}

// act(z)
template <typename T>
C10_HOST_DEVICE inline T act_forward(int act, T z) {
  switch (act) {
    case kRelu:
      return z > T(0) ? z : T(0);
    case kTanh:
      return CONTNET_MATH(tanh)(z);
    case kGelu:  // exact (erf) form, as torch.nn.functional.gelu
      return T(0.5) * z * (T(1) + CONTNET_MATH(erf)(z * T(0.70710678118654752440)));
    case kSilu:
      return z * sigmoid(z);
    case kSoftplus:  // beta = 1, threshold = 20, as torch.nn.functional.softplus
      return z > T(20) ? z : CONTNET_MATH(log1p)(CONTNET_MATH(exp)(z));
    default:
      return z;
  }
}

// d act / d z at z
template <typename T>
C10_HOST_DEVICE inline T act_grad(int act, T z) {
  switch (act) {
    case kRelu:
      return z > T(0) ? T(1) : T(0);
    case kTanh: {
      const T t = CONTNET_MATH(tanh)(z);
      return T(1) - t * t;
    }
    case kGelu: {
      const T cdf = T(0.5) * (T(1) + CONTNET_MATH(erf)(z * T(0.70710678118654752440)));
      const T pdf = CONTNET_MATH(exp)(T(-0.5) * z * z) * T(0.39894228040143267794);
      return cdf + z * pdf;
    }
    case kSilu: {
      const T s = sigmoid(z);
      return s * (T(1) + z * (T(1) - s));
    }
    case kSoftplus:
      return z > T(20) ? T(1) : sigmoid(z);
    default:
      return T(1);
  }
}

}  // namespace contnet
