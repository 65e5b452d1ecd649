// Launch helpers shared by the CUDA kernels: 16-byte vectors, strided indexing of a
// TensorIterator's operands, grid sizing. Device code sees only pointers and sizes.
#pragma once

#include <ATen/TensorIterator.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace contnet {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kMaxDims = 6;
constexpr int kMaxOperands = 10;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T val[N];
};

// Element offsets of up to kMaxOperands operands sharing one iteration shape (dim 0 fastest).
struct StridedIndex {
  int ndim;
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxOperands][kMaxDims];

  __device__ inline void offsets(int64_t linear, int nops, int64_t* off) const {
    for (int a = 0; a < nops; ++a) off[a] = 0;
    for (int d = 0; d < ndim; ++d) {
      const int64_t i = linear % sizes[d];
      linear /= sizes[d];
      for (int a = 0; a < nops; ++a) off[a] += i * strides[a][d];
    }
  }
};

// Tensors of more dims than the strided index holds are taken through dense copies.
inline bool too_deep(const at::Tensor& t) { return t.dim() > kMaxDims; }

inline StridedIndex make_strided_index(const at::TensorIteratorBase& iter) {
  StridedIndex s{};
  s.ndim = static_cast<int>(iter.ndim());
  for (int d = 0; d < s.ndim; ++d) s.sizes[d] = iter.shape()[d];
  for (int a = 0; a < iter.ntensors(); ++a) {
    const int64_t elem = iter.element_size(a);
    for (int d = 0; d < s.ndim; ++d) s.strides[a][d] = iter.strides(a)[d] / elem;
  }
  return s;
}

// Multiprocessors of the current device, looked up once per device (host threads may race
// to fill an entry: each writes the same value, atomically). Devices past the table are
// looked up at every call.
inline int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // static storage: zero until filled
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kMaxDevices) {
    const int hit = cache[dev].load(std::memory_order_relaxed);
    if (hit > 0) return hit;
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (dev < kMaxDevices) cache[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

// Blocks for a grid-stride loop over `work` items: enough to fill the device, no more.
inline int grid_for(int64_t work) {
  const int sms = sm_count();
  const int64_t want = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sms) * 16)));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace cuda
}  // namespace contnet
