// Host-side layout handling for kernels that walk operands as flat arrays: every operand is
// brought to one dense memory format (contiguous, or channels_last for 4-d tensors). Dense
// operands in that format are used as they are (no copy); others are copied once.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/sum.h>

#include <cstdint>
#include <vector>

namespace contnet {

// channels_last if `t` is a 4-d tensor stored that way (and not also contiguous), else contiguous.
inline at::MemoryFormat dense_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

inline at::Tensor in_format(const at::Tensor& t, at::MemoryFormat f) {
  if (!t.defined()) return t;
  if (t.dim() != 4 && f == at::MemoryFormat::ChannelsLast) return t.contiguous();
  return t.contiguous(f);
}

// Where channel dim 1 sits in the flat order of a dense tensor: element i has channel
// (i / inner) % channels.
struct ChannelIndex {
  int64_t inner;
  int64_t channels;
};

inline ChannelIndex channel_index(const at::Tensor& t, at::MemoryFormat f) {
  const int64_t c = t.dim() >= 2 ? t.size(1) : 1;
  if (f == at::MemoryFormat::ChannelsLast) return {1, c};
  int64_t inner = 1;
  for (int64_t d = 2; d < t.dim(); ++d) inner *= t.size(d);
  return {inner, c};
}

// Sum over every dimension but the channel dimension 1 (a per-channel bias's gradient).
inline at::Tensor channel_sum(const at::Tensor& t) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (d != 1) dims.push_back(d);
  return at::sum(t, dims);
}

}  // namespace contnet
