// Activations of the residual unit's tail and their derivatives, for the fused epilogue.
// Their codes come from the one table contnet/ops/activations.def, which Python reads too;
// one definition of each serves CPU and CUDA.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace contnet {

enum Act : int {
#define CONTNET_ACTIVATION(name, Name) k##Name,
#include "activations.def"
#undef CONTNET_ACTIVATION
  kNumActs
};

// Runs the statements with `A` a compile-time constant equal to the runtime code `act`
// (an unknown code as identity, which the checks refuse before any kernel runs).
#define CONTNET_WITH_ACT(act, A, ...)                          \
  switch (act) {                                               \
    case kRelu: { constexpr int A = kRelu; __VA_ARGS__; }        \
    case kTanh: { constexpr int A = kTanh; __VA_ARGS__; }        \
    case kGelu: { constexpr int A = kGelu; __VA_ARGS__; }        \
    case kSilu: { constexpr int A = kSilu; __VA_ARGS__; }        \
    case kSoftplus: { constexpr int A = kSoftplus; __VA_ARGS__; } \
    default: { constexpr int A = kIdentity; __VA_ARGS__; }       \
  }

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

// act(z) for an activation known at compile time
template <int ACT, typename T>
C10_HOST_DEVICE inline T act_forward_t(T z) {
  if constexpr (ACT == kRelu) {
    return z < T(0) ? T(0) : z;  // NaN passes through, as torch.relu
  } else if constexpr (ACT == kTanh) {
    return CONTNET_MATH(tanh)(z);
  } else if constexpr (ACT == kGelu) {  // exact (erf) form, as torch.nn.functional.gelu
    return T(0.5) * z * (T(1) + CONTNET_MATH(erf)(z * T(0.70710678118654752440)));
  } else if constexpr (ACT == kSilu) {
    return z * sigmoid(z);
  } else if constexpr (ACT == kSoftplus) {  // beta = 1, threshold = 20, as torch's softplus
    return z > T(20) ? z : CONTNET_MATH(log1p)(CONTNET_MATH(exp)(z));
  } else {
    return z;
  }
}

// d act / d z at z, for an activation known at compile time
template <int ACT, typename T>
C10_HOST_DEVICE inline T act_grad_t(T z) {
  if constexpr (ACT == kRelu) {
    return z <= T(0) ? T(0) : T(1);
  } else if constexpr (ACT == kTanh) {
    const T t = CONTNET_MATH(tanh)(z);
    return T(1) - t * t;
  } else if constexpr (ACT == kGelu) {
    const T cdf = T(0.5) * (T(1) + CONTNET_MATH(erf)(z * T(0.70710678118654752440)));
    const T pdf = CONTNET_MATH(exp)(T(-0.5) * z * z) * T(0.39894228040143267794);
    return cdf + z * pdf;
  } else if constexpr (ACT == kSilu) {
    const T s = sigmoid(z);
    return s * (T(1) + z * (T(1) - s));
  } else if constexpr (ACT == kSoftplus) {
    return z > T(20) ? T(1) : sigmoid(z);
  } else {
    return T(1);
  }
}

// g * act'(z): for relu the select z <= 0 ? 0 : g (as torch's threshold_backward), which
// vectorises, where a multiplication by a 0/1 factor would not (NaN * 0, -0).
template <int ACT, typename T>
C10_HOST_DEVICE inline T act_backward_t(T g, T z) {
  if constexpr (ACT == kRelu) {
    return z <= T(0) ? T(0) : g;  // as torch's threshold_backward (NaN input: g)
  } else if constexpr (ACT == kIdentity) {
    return g;
  } else {
    return g * act_grad_t<ACT>(z);
  }
}

// The same for an activation code known at run time.
template <typename T>
C10_HOST_DEVICE inline T act_forward(int act, T z) {
  CONTNET_WITH_ACT(act, A, return act_forward_t<A>(z))
}

template <typename T>
C10_HOST_DEVICE inline T act_backward(int act, T g, T z) {
  CONTNET_WITH_ACT(act, A, return act_backward_t<A>(g, z))
}

}  // namespace contnet
