// CPU kernels of the stage-accumulation ops: TensorIterator for any strides, at::vec
// vectors on contiguous runs, at::parallel_for through TensorIterator::for_each.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "contnet/checks.h"
#include "contnet/rk_combine.h"

namespace contnet {
namespace {

using at::vec::Vectorized;

// Loads and stores of one vector's worth of scalar_t as float vectors (two of them for
// float16/bfloat16, whose vectors hold twice as many elements as a float vector).
template <typename scalar_t>
struct VecIO {
  using acc_t = scalar_t;
  using V = Vectorized<scalar_t>;
  static constexpr int kParts = 1;
  static constexpr int64_t size() { return V::size(); }
  static void load(const scalar_t* p, Vectorized<acc_t>* out) { out[0] = V::loadu(p); }
  static void store(scalar_t* p, const Vectorized<acc_t>* in) { in[0].store(p); }
};

template <typename reduced_t>
struct VecIOReduced {
  using acc_t = float;
  using V = Vectorized<reduced_t>;
  static constexpr int kParts = 2;
  static constexpr int64_t size() { return V::size(); }
  static void load(const reduced_t* p, Vectorized<float>* out) {
    auto [a, b] = at::vec::convert_to_float<reduced_t>(V::loadu(p));
    out[0] = a;
    out[1] = b;
  }
  static void store(reduced_t* p, const Vectorized<float>* in) {
    at::vec::convert_from_float<reduced_t>(in[0], in[1]).store(p);
  }
};
template <>
struct VecIO<at::Half> : VecIOReduced<at::Half> {};
template <>
struct VecIO<at::BFloat16> : VecIOReduced<at::BFloat16> {};

// out[i] = x[i] + sum_j c_j k_j[i] over a run of `len` contiguous elements.
template <typename scalar_t, typename acc_t>
void combine_contiguous(scalar_t* out, const scalar_t* x, const scalar_t* const* k,
                        const Coefs<acc_t>& c, int64_t len) {
  using IO = VecIO<scalar_t>;
  using FV = Vectorized<acc_t>;
  constexpr int P = IO::kParts;
  int64_t i = 0;
  for (; i + IO::size() <= len; i += IO::size()) {
    FV acc[P], kv[P];
    IO::load(x + i, acc);
    for (int j = 0; j < c.n; ++j) {
      IO::load(k[j] + i, kv);
      const FV cj(c.v[j]);
      for (int p = 0; p < P; ++p) acc[p] = at::vec::fmadd(cj, kv[p], acc[p]);
    }
    IO::store(out + i, acc);
  }
  for (; i < len; ++i) {
    acc_t kv[kMaxTerms];
    for (int j = 0; j < c.n; ++j) kv[j] = static_cast<acc_t>(k[j][i]);
    out[i] = static_cast<scalar_t>(combine(static_cast<acc_t>(x[i]), kv, c));
  }
}

// out_j[i] = c_j g[i] for j < c.n over a contiguous run.
template <typename scalar_t, typename acc_t>
void scale_contiguous(scalar_t* const* out, const scalar_t* g, const Coefs<acc_t>& c,
                      int64_t len) {
  using IO = VecIO<scalar_t>;
  using FV = Vectorized<acc_t>;
  constexpr int P = IO::kParts;
  int64_t i = 0;
  for (; i + IO::size() <= len; i += IO::size()) {
    FV gv[P], o[P];
    IO::load(g + i, gv);
    for (int j = 0; j < c.n; ++j) {
      const FV cj(c.v[j]);
      for (int p = 0; p < P; ++p) o[p] = gv[p] * cj;
      IO::store(out[j] + i, o);
    }
  }
  for (; i < len; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    for (int j = 0; j < c.n; ++j) out[j][i] = static_cast<scalar_t>(c.v[j] * gi);
  }
}

bool all_unit_strides(const int64_t* strides, int ntensors, int64_t elem) {
  for (int a = 0; a < ntensors; ++a)
    if (strides[a] != elem) return false;
  return true;
}

// One pass: out = base + sum_{j<n} c_j terms[start + j]. `base` may be `out` itself.
void combine_pass(const at::Tensor& out, const at::Tensor& base, at::TensorList terms,
                  size_t start, int n, double h, at::ArrayRef<double> coeffs) {
  at::TensorIteratorConfig cfg;
  cfg.add_output(out).add_const_input(base).resize_outputs(false).check_all_same_dtype(true);
  for (int j = 0; j < n; ++j) cfg.add_const_input(terms[start + j]);
  auto iter = cfg.build();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "rk_combine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto c = make_coefs<acc_t>(h, coeffs, start, n);
    const int nt = iter.ntensors();
    iter.for_each([&](char** data, const int64_t* strides, int64_t n0, int64_t n1) {
      const scalar_t* k[kMaxTerms];
      for (int64_t i1 = 0; i1 < n1; ++i1) {
        char* ptr[kMaxTerms + 2];
        for (int a = 0; a < nt; ++a) ptr[a] = data[a] + i1 * strides[nt + a];
        for (int j = 0; j < n; ++j) k[j] = reinterpret_cast<const scalar_t*>(ptr[2 + j]);
        if (all_unit_strides(strides, nt, sizeof(scalar_t))) {
          combine_contiguous<scalar_t, acc_t>(reinterpret_cast<scalar_t*>(ptr[0]),
                                              reinterpret_cast<const scalar_t*>(ptr[1]), k, c, n0);
          continue;
        }
        for (int64_t i0 = 0; i0 < n0; ++i0) {
          acc_t kv[kMaxTerms];
          for (int j = 0; j < n; ++j)
            kv[j] = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(ptr[2 + j] + i0 * strides[2 + j]));
          const acc_t xv = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(ptr[1] + i0 * strides[1]));
          *reinterpret_cast<scalar_t*>(ptr[0] + i0 * strides[0]) = static_cast<scalar_t>(combine(xv, kv, c));
        }
      }
    });
  });
}

at::Tensor rk_combine_cpu(const at::Tensor& x, at::TensorList terms, double h,
                          at::ArrayRef<double> coeffs) {
  check_terms(x, "x", terms, "terms", coeffs.size(), "coeffs");
  TORCH_CHECK(x.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x.device());
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

std::vector<at::Tensor> rk_combine_backward_cpu(const at::Tensor& grad, double h,
                                                at::ArrayRef<double> coeffs) {
  TORCH_CHECK(grad.defined(), "grad is undefined");
  check_float_dtype(grad, "grad");
  TORCH_CHECK(grad.device().is_cpu(), "grad must be a CPU tensor for the CPU kernel, got ",
              grad.device());
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
            scale_contiguous<scalar_t, acc_t>(o, reinterpret_cast<const scalar_t*>(ptr[n]), c, n0);
            continue;
          }
          for (int64_t i0 = 0; i0 < n0; ++i0) {
            const acc_t g = static_cast<acc_t>(*reinterpret_cast<const scalar_t*>(ptr[n] + i0 * strides[n]));
            for (int j = 0; j < n; ++j)
              *reinterpret_cast<scalar_t*>(ptr[j] + i0 * strides[j]) = static_cast<scalar_t>(c.v[j] * g);
          }
        }
      });
    });
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CPU, m) {
  m.impl("rk_combine", &rk_combine_cpu);
  m.impl("rk_combine_backward", &rk_combine_backward_cpu);
}

}  // namespace contnet
