// CPU kernels of the stage-accumulation ops. TensorIterator handles any strides and splits
// the work over threads (at::parallel_for); contiguous runs go through loops specialised
// on the number of terms, which the compiler vectorises (see CONTNET_CPU_CLONES).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorIterator.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "contnet/checks.h"
#include "contnet/layout.h"
#include "contnet/rk_combine.h"

namespace contnet {
namespace {

// The first line of a small text file (a sysfs entry), empty if it cannot be read. POSIX
// calls, not iostreams: no locale is touched on this path.
std::string first_line(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  char buf[64];
  const ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return {};
  buf[n] = '\0';
  std::string line(buf);
  return line.substr(0, line.find('\n'));
}

// Bytes of the last-level cache one core sees: sysfs's size of cpu0's highest cache level
// (per cache instance, where sysconf may report all instances together); sysconf; 32 MiB.
int64_t llc_bytes() {
  static const int64_t bytes = [] {
    int64_t best = 0;
    long best_level = 0;
    for (int index = 0; index < 8; ++index) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
      const std::string level = first_line(dir + "level"), size = first_line(dir + "size");
      if (level.empty() || size.empty()) continue;
      const long lv = std::strtol(level.c_str(), nullptr, 10);
      char* unit = nullptr;
      int64_t v = std::strtoll(size.c_str(), &unit, 10);
      if (*unit == 'K') v <<= 10;
      if (*unit == 'M') v <<= 20;
      if (v > 0 && lv >= best_level) best = v, best_level = lv;
    }
#ifdef _SC_LEVEL3_CACHE_SIZE
    if (best <= 0) best = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return best > 0 ? best : int64_t(32) << 20;
  }();
  return bytes;
}

// Copies `bytes` (a multiple of 16) from `src` to 16-byte-aligned `dst` with non-temporal
// stores: the lines go to memory without being read first (no read-for-ownership).
inline void stream_copy(void* dst, const void* src, int64_t bytes) {
#if defined(__SSE2__)
  auto* d = static_cast<__m128i*>(dst);
  const auto* s = static_cast<const __m128i*>(src);
  for (int64_t i = 0; i < bytes / 16; ++i) _mm_stream_si128(d + i, _mm_loadu_si128(s + i));
#else
  std::memcpy(dst, src, static_cast<size_t>(bytes));
#endif
}

// Orders this thread's non-temporal stores before whatever it does next.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// out[i] = x[i] + sum_j c_j k_j[i] over `len` contiguous elements.
template <typename scalar_t, typename acc_t, int N>
CONTNET_CPU_CLONES void combine_run(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                    const scalar_t* const* k_in, const acc_t* c, int64_t len) {
  const scalar_t* __restrict__ k[N > 0 ? N : 1];
  acc_t cc[N > 0 ? N : 1];
  for (int j = 0; j < N; ++j) k[j] = k_in[j], cc[j] = c[j];
  for (int64_t i = 0; i < len; ++i) {
    acc_t kv[N > 0 ? N : 1];
    for (int j = 0; j < N; ++j) kv[j] = static_cast<acc_t>(k[j][i]);
    out[i] = static_cast<scalar_t>(combine_n<N>(static_cast<acc_t>(x[i]), kv, cc));
  }
}

// combine_run through an L1 buffer, block by block, then copied to `out`: for a pass that
// reads `out` as its base (sums of more than kMaxTerms terms; combine_run's operands must
// not overlap), and, with `nontemporal`, for operands larger than the cache: then the
// copy streams to memory, which saves the read of every output line before its write (an
// eighth of the traffic of a 5-term update; the output would not stay in cache anyway).
template <typename scalar_t, typename acc_t, int N>
void combine_run_buffered(scalar_t* out, const scalar_t* x, const scalar_t* const* k, const acc_t* c,
                          int64_t len, bool nontemporal) {
  constexpr int64_t kBlock = 4096 / sizeof(scalar_t);
  constexpr int64_t kElem = sizeof(scalar_t);
  alignas(64) scalar_t buf[kBlock];
  const scalar_t* kb[N > 0 ? N : 1];
  // a first, short block up to where `out` is 16-byte aligned: the later blocks stream
  const auto misalign = static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(out) % 16);
  const bool can_stream = nontemporal && misalign % kElem == 0;
  int64_t m = can_stream && misalign ? (16 - misalign) / kElem : kBlock;
  for (int64_t i = 0; i < len; i += m, m = kBlock) {
    m = std::min(m, len - i);
    for (int j = 0; j < N; ++j) kb[j] = k[j] + i;
    combine_run<scalar_t, acc_t, N>(buf, x + i, kb, c, m);
    const bool aligned = reinterpret_cast<std::uintptr_t>(out + i) % 16 == 0;
    const int64_t streamed = can_stream && aligned ? m * kElem / 16 * 16 : 0;
    stream_copy(out + i, buf, streamed);
    std::memcpy(out + i + streamed / kElem, buf + streamed / kElem, static_cast<size_t>(m * kElem - streamed));
  }
  if (can_stream) stream_fence();
}

// out_j[i] = c_j g[i] over `len` contiguous elements.
template <typename scalar_t, typename acc_t, int N>
CONTNET_CPU_CLONES void scale_run(scalar_t* const* out_in, const scalar_t* __restrict__ g,
                                  const acc_t* c, int64_t len) {
  scalar_t* __restrict__ out[N];
  acc_t cc[N];
  for (int j = 0; j < N; ++j) out[j] = out_in[j], cc[j] = c[j];
  for (int64_t i = 0; i < len; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    for (int j = 0; j < N; ++j) out[j][i] = static_cast<scalar_t>(combine_grad(cc[j], gi));
  }
}

// Calls f(std::integral_constant<int, n>) for a runtime n in [Lo, kMaxTerms].
template <int Lo, typename F>
void with_count(int n, F&& f) {
  if constexpr (Lo <= kMaxTerms) {
    if (n == Lo) return f(std::integral_constant<int, Lo>{});
    with_count<Lo + 1>(n, std::forward<F>(f));
  }
}

bool all_unit_strides(const int64_t* strides, int ntensors, int64_t elem) {
  for (int a = 0; a < ntensors; ++a)
    if (strides[a] != elem) return false;
  return true;
}

template <typename scalar_t>
const scalar_t* at_offset(char* p, int64_t i, int64_t stride) {
  return reinterpret_cast<const scalar_t*>(p + i * stride);
}

// One pass: out = base + sum_{j<n} c_j terms[start + j]. `base` may be `out` itself.
void combine_pass(const at::Tensor& out, const at::Tensor& base, at::TensorList terms,
                  size_t start, int n, double h, at::ArrayRef<double> coeffs) {
  at::TensorIteratorConfig cfg;
  cfg.add_output(out).add_const_input(base).resize_outputs(false).check_all_same_dtype(true);
  for (int j = 0; j < n; ++j) cfg.add_const_input(terms[start + j]);
  auto iter = cfg.build();
  // Operands larger than the cache: the output goes straight to memory.
  const bool stream = (n + 2) * out.numel() * static_cast<int64_t>(out.element_size()) > llc_bytes();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "rk_combine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto c = make_coefs<acc_t>(h, coeffs, start, n);
    const int nt = iter.ntensors();
    iter.for_each([&](char** data, const int64_t* strides, int64_t n0, int64_t n1) {
      for (int64_t i1 = 0; i1 < n1; ++i1) {
        char* ptr[kMaxTerms + 2];
        for (int a = 0; a < nt; ++a) ptr[a] = data[a] + i1 * strides[nt + a];
        if (all_unit_strides(strides, nt, sizeof(scalar_t))) {
          const scalar_t* k[kMaxTerms];
          for (int j = 0; j < n; ++j) k[j] = reinterpret_cast<const scalar_t*>(ptr[2 + j]);
          with_count<0>(n, [&](auto N) {
            auto* o = reinterpret_cast<scalar_t*>(ptr[0]);
            const auto* b = reinterpret_cast<const scalar_t*>(ptr[1]);
            if (stream || o == b)
              combine_run_buffered<scalar_t, acc_t, decltype(N)::value>(o, b, k, c.v, n0, stream);
            else
              combine_run<scalar_t, acc_t, decltype(N)::value>(o, b, k, c.v, n0);
          });
          continue;
        }
        for (int64_t i0 = 0; i0 < n0; ++i0) {
          acc_t kv[kMaxTerms];
          for (int j = 0; j < n; ++j) kv[j] = static_cast<acc_t>(*at_offset<scalar_t>(ptr[2 + j], i0, strides[2 + j]));
          const acc_t xv = static_cast<acc_t>(*at_offset<scalar_t>(ptr[1], i0, strides[1]));
          *reinterpret_cast<scalar_t*>(ptr[0] + i0 * strides[0]) = static_cast<scalar_t>(combine(xv, kv, c));
        }
      }
    });
  });
}

// out = x + h sum_j coeffs[j] terms[j] in passes of at most kMaxTerms terms.
at::Tensor combine_cpu(const at::Tensor& x, at::TensorList terms, double h,
                       at::ArrayRef<double> coeffs) {
  check_device(x, "x", at::kCPU);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const size_t m = terms.size();
  size_t start = 0;
  do {
    const int n = static_cast<int>(std::min<size_t>(kMaxTerms, m - start));
    combine_pass(out, start == 0 ? x : out, terms, start, n, h, coeffs);
    start += n;
  } while (start < m);
  return out;
}

at::Tensor rk_combine_cpu(const at::Tensor& x, at::TensorList terms, double h,
                          at::ArrayRef<double> coeffs) {
  check_terms(x, "x", terms, "terms", coeffs.size(), "coeffs");
  const auto a = combine_operands(x, terms, h, coeffs);
  const at::Tensor out = combine_cpu(a.x, a.terms, h, a.coeffs);
  return a.widened ? out.to(x.scalar_type()) : out;
}

std::vector<at::Tensor> rk_combine_backward_cpu(const at::Tensor& grad, double h,
                                                at::ArrayRef<double> coeffs) {
  check_grad(grad);
  check_device(grad, "grad", at::kCPU);
  std::vector<at::Tensor> outs;
  for (size_t j = 0; j < coeffs.size(); ++j) outs.push_back(at::empty_like(grad));
  if (grad.numel() == 0) return outs;
  for (size_t start = 0; start < coeffs.size(); start += kMaxTerms) {
    const int n = static_cast<int>(std::min<size_t>(kMaxTerms, coeffs.size() - start));
    at::TensorIteratorConfig cfg;
    for (int j = 0; j < n; ++j) cfg.add_output(outs[start + j]);
    cfg.add_const_input(grad).resize_outputs(false).check_all_same_dtype(true);
    auto iter = cfg.build();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rk_combine_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto c = make_coefs<acc_t>(h, coeffs, start, n);
      const int nt = iter.ntensors();
      iter.for_each([&](char** data, const int64_t* strides, int64_t n0, int64_t n1) {
        for (int64_t i1 = 0; i1 < n1; ++i1) {
          char* ptr[kMaxTerms + 1];
          for (int a = 0; a < nt; ++a) ptr[a] = data[a] + i1 * strides[nt + a];
          if (all_unit_strides(strides, nt, sizeof(scalar_t))) {
            scalar_t* o[kMaxTerms];
            for (int j = 0; j < n; ++j) o[j] = reinterpret_cast<scalar_t*>(ptr[j]);
            with_count<1>(n, [&](auto N) {
              scale_run<scalar_t, acc_t, decltype(N)::value>(o, reinterpret_cast<const scalar_t*>(ptr[n]), c.v, n0);
            });
            continue;
          }
          for (int64_t i0 = 0; i0 < n0; ++i0) {
            const acc_t g = static_cast<acc_t>(*at_offset<scalar_t>(ptr[n], i0, strides[n]));
            for (int j = 0; j < n; ++j)
              *reinterpret_cast<scalar_t*>(ptr[j] + i0 * strides[j]) = static_cast<scalar_t>(combine_grad(c.v[j], g));
          }
        }
      });
    });
  }
  return outs;
}

std::vector<double> coeff_values(const at::Tensor& coeffs) {
  const at::Tensor c = coeffs.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

at::Tensor rk_combine_learned_cpu(const at::Tensor& x, at::TensorList terms, double h,
                                  const at::Tensor& coeffs) {
  check_terms(x, "x", terms, "terms", terms.size(), "terms");
  check_learned_coeffs(coeffs, x, "x", terms.size());
  return combine_cpu(x, terms, h, coeff_values(coeffs));
}

// grad_terms[j] = h c_j g and dot[j] = sum_i terms[j][i] g[i] over contiguous runs; the
// dot products accumulate in double, per chunk, and are summed in chunk order.
template <typename scalar_t>
void learned_backward_run(scalar_t* const* gt, double* dot, const scalar_t* g,
                          const scalar_t* const* terms, const double* c, int n, int64_t begin,
                          int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int j = 0; j < n; ++j) {
    const acc_t cj = static_cast<acc_t>(c[j]);
    double s = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const acc_t gi = static_cast<acc_t>(g[i]);
      gt[j][i] = static_cast<scalar_t>(combine_grad(cj, gi));
      s += static_cast<double>(static_cast<acc_t>(terms[j][i]) * gi);
    }
    dot[j] += s;
  }
}

std::tuple<std::vector<at::Tensor>, at::Tensor> rk_combine_learned_backward_cpu(
    const at::Tensor& grad, at::TensorList terms, double h, const at::Tensor& coeffs) {
  check_terms(grad, "grad", terms, "terms", terms.size(), "terms");
  check_learned_coeffs(coeffs, grad, "grad", terms.size());
  const int n = static_cast<int>(terms.size());
  const auto fmt = dense_format(grad);
  const at::Tensor g = in_format(grad, fmt);
  std::vector<at::Tensor> ts, outs;
  for (const auto& t : terms) ts.push_back(in_format(t, fmt)), outs.push_back(at::empty_like(g));
  std::vector<double> c = coeff_values(coeffs);
  for (auto& v : c) v *= h;
  const int64_t numel = g.numel();
  constexpr int64_t kChunk = 1 << 15;
  const int64_t n_chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks) * n, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "rk_combine_learned_backward_cpu", [&] {
    std::vector<scalar_t*> gt;
    std::vector<const scalar_t*> tp;
    for (int j = 0; j < n; ++j) gt.push_back(outs[j].data_ptr<scalar_t>()), tp.push_back(ts[j].data_ptr<scalar_t>());
    const scalar_t* gp = g.data_ptr<scalar_t>();
    at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t ch = cb; ch < ce; ++ch)
        learned_backward_run<scalar_t>(gt.data(), partial.data() + ch * n, gp, tp.data(), c.data(), n,
                                       ch * kChunk, std::min(numel, (ch + 1) * kChunk));
    });
  });
  at::Tensor dots = at::empty({n}, coeffs.options().dtype(at::kDouble));
  double* dp = dots.data_ptr<double>();
  for (int j = 0; j < n; ++j) {
    double s = 0.0;
    for (int64_t ch = 0; ch < n_chunks; ++ch) s += partial[ch * n + j];
    dp[j] = h * s;
  }
  return {outs, dots.to(coeffs.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CPU, m) {
  m.impl("rk_combine", &rk_combine_cpu);
  m.impl("rk_combine_backward", &rk_combine_backward_cpu);
  m.impl("rk_combine_learned", &rk_combine_learned_cpu);
  m.impl("rk_combine_learned_backward", &rk_combine_learned_backward_cpu);
}

}  // namespace contnet
