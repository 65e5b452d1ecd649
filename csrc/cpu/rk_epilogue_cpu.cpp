// CPU kernels of the fused stage epilogue. Operands are brought to one dense layout (y's:
// contiguous or channels_last) and walked in L1-sized chunks: each chunk computes k once,
// then every output as a few simple loops the compiler vectorises, so memory is read and
// written once.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "contnet/checks.h"
#include "contnet/layout.h"
#include "contnet/rk_epilogue.h"

namespace contnet {
namespace {

constexpr int64_t kChunk = 2048;  // elements per chunk: k of a chunk stays in L1

// Calls f(std::integral_constant<int, n>) for a runtime n in [Lo, Hi].
template <int Lo, int Hi, typename F>
void with_count(int n, F&& f) {
  if constexpr (Lo <= Hi) {
    if (n == Lo) return f(std::integral_constant<int, Lo>{});
    with_count<Lo + 1, Hi>(n, std::forward<F>(f));
  }
}

// Calls f(std::integral_constant<int, act>) so loops see the activation as a constant.
template <typename F>
void with_act(int act, F&& f) {
  CONTNET_WITH_ACT(act, A, return f(std::integral_constant<int, A>{}))
}

// Calls seg(i0, i1, add) over [0, len), the elements begin .. begin + len of the flat order,
// cut where the bias changes form: add(v, i) is v plus the bias of element i. No bias: one
// segment, add(v, i) = v. Channels not innermost (contiguous NCHW): runs of one channel,
// one bias value per run. Channels innermost (channels_last, inner == 1): rows of C
// elements whose biases are bias[0..C) in order. Each seg instance sees one form, so its
// loop vectorises.
template <typename acc_t, typename scalar_t, typename Seg>
CONTNET_FORCE_INLINE inline void for_bias_segments(const scalar_t* bias, ChannelIndex ci, int64_t begin, int64_t len, Seg&& seg) {
  if (bias == nullptr) {
    seg(int64_t(0), len, [](acc_t v, int64_t) CONTNET_FORCE_INLINE { return v; });
    return;
  }
  int64_t i = 0;
  if (ci.inner == 1) {
    while (i < len) {
      const int64_t c0 = (begin + i) % ci.channels;
      const int64_t end = i + std::min(len - i, ci.channels - c0);
      const scalar_t* row = bias + c0;  // row[j - i0] is the bias of local element j
      const int64_t i0 = i;
      seg(i, end, [row, i0](acc_t v, int64_t j) CONTNET_FORCE_INLINE { return v + static_cast<acc_t>(row[j - i0]); });
      i = end;
    }
    return;
  }
  while (i < len) {
    const int64_t pos = begin + i;
    const acc_t b = static_cast<acc_t>(bias[(pos / ci.inner) % ci.channels]);
    const int64_t end = i + std::min(len - i, ci.inner - pos % ci.inner);
    seg(i, end, [b](acc_t v, int64_t) CONTNET_FORCE_INLINE { return v + b; });
    i = end;
  }
}

// k[i] = scale * act(y[i] + bias[channel of begin + i])
template <typename scalar_t, typename acc_t, int ACT>
CONTNET_CPU_CLONES void tail_run(acc_t* __restrict__ k, const scalar_t* __restrict__ y, const scalar_t* bias,
                                 ChannelIndex ci, acc_t scale, int64_t begin, int64_t len) {
  for_bias_segments<acc_t>(bias, ci, begin, len, [&](int64_t i0, int64_t i1, auto add) CONTNET_FORCE_INLINE {
    for (int64_t i = i0; i < i1; ++i) k[i] = tail_forward<ACT>(scale, add(static_cast<acc_t>(y[i]), i));
  });
}

// mask[i] = relu_pass(y[i] + bias[channel of begin + i])
template <typename scalar_t, typename acc_t>
CONTNET_CPU_CLONES void mask_run(bool* __restrict__ mask, const scalar_t* __restrict__ y, const scalar_t* bias,
                                 ChannelIndex ci, int64_t begin, int64_t len) {
  for_bias_segments<acc_t>(bias, ci, begin, len, [&](int64_t i0, int64_t i1, auto add) CONTNET_FORCE_INLINE {
    for (int64_t i = i0; i < i1; ++i) mask[i] = relu_pass(add(static_cast<acc_t>(y[i]), i));
  });
}

// out[i] = base[i] + sum_{j<NT} c_j term_j[i] + ck * k[i]   (zero c_j already dropped; the
// k term only WITH_K, which the caller sets where ck is nonzero)
template <typename scalar_t, typename acc_t, int NT, bool WITH_K>
CONTNET_CPU_CLONES void out_run(scalar_t* __restrict__ out, const scalar_t* __restrict__ base,
                                const scalar_t* const* term_in, const acc_t* c_in, acc_t ck,
                                const acc_t* __restrict__ k, int64_t len) {
  const scalar_t* __restrict__ term[NT > 0 ? NT : 1];
  acc_t c[NT > 0 ? NT : 1];
  for (int j = 0; j < NT; ++j) term[j] = term_in[j], c[j] = c_in[j];
  for (int64_t i = 0; i < len; ++i) {
    acc_t t[NT > 0 ? NT : 1];
    for (int j = 0; j < NT; ++j) t[j] = static_cast<acc_t>(term[j][i]);
    out[i] = static_cast<scalar_t>(output_n<NT, WITH_K>(static_cast<acc_t>(base[i]), t, c, ck, k[i]));
  }
}

// buf[i] = (gk ? gk[i] : 0) + sum_{o<NO} c_o g_o[i]
template <typename scalar_t, typename acc_t, int NO>
CONTNET_CPU_CLONES void grad_k_run(acc_t* __restrict__ buf, const scalar_t* const* g_in, const acc_t* c_in,
                                   const scalar_t* gk, int64_t len) {
  const scalar_t* __restrict__ g[NO > 0 ? NO : 1];
  acc_t c[NO > 0 ? NO : 1];
  for (int o = 0; o < NO; ++o) g[o] = g_in[o], c[o] = c_in[o];
  if (gk) {
    for (int64_t i = 0; i < len; ++i) buf[i] = static_cast<acc_t>(gk[i]);
  } else {
    for (int64_t i = 0; i < len; ++i) buf[i] = acc_t(0);
  }
  for (int64_t i = 0; i < len; ++i) {
    acc_t gv[NO > 0 ? NO : 1];
    for (int o = 0; o < NO; ++o) gv[o] = static_cast<acc_t>(g[o][i]);
    buf[i] = combine_n<NO>(buf[i], gv, c);
  }
}

// gy[i] = buf[i] * scale * act'(y[i] + bias[channel])
template <typename scalar_t, typename acc_t, int ACT>
CONTNET_CPU_CLONES void grad_tail_run(scalar_t* __restrict__ gy, const acc_t* __restrict__ buf,
                                      const scalar_t* __restrict__ y, const scalar_t* bias, ChannelIndex ci,
                                      acc_t scale, int64_t begin, int64_t len) {
  for_bias_segments<acc_t>(bias, ci, begin, len, [&](int64_t i0, int64_t i1, auto add) CONTNET_FORCE_INLINE {
    for (int64_t i = i0; i < i1; ++i)
      gy[i] = static_cast<scalar_t>(tail_backward<ACT>(buf[i], scale, add(static_cast<acc_t>(y[i]), i)));
  });
}

// gy[i] = mask[i] ? buf[i] * scale : 0   (relu, from its mask). The mask is read as bytes
// and the product formed first: so written the select vectorises (a bool operand, or the
// product inside the select, leaves a branch per element, mispredicted half the time).
template <typename scalar_t, typename acc_t>
CONTNET_CPU_CLONES void grad_mask_run(scalar_t* __restrict__ gy, const acc_t* __restrict__ buf,
                                      const uint8_t* __restrict__ mask, acc_t scale, int64_t len) {
  for (int64_t i = 0; i < len; ++i) gy[i] = static_cast<scalar_t>(tail_backward_masked(mask[i] != 0, buf[i], scale));
}

// out[i] = sum_{o<NO} c_o g_o[i]
template <typename scalar_t, typename acc_t, int NO>
CONTNET_CPU_CLONES void grad_term_run(scalar_t* __restrict__ out, const scalar_t* const* g_in, const acc_t* c_in,
                                      int64_t len) {
  const scalar_t* __restrict__ g[NO > 0 ? NO : 1];
  acc_t c[NO > 0 ? NO : 1];
  for (int o = 0; o < NO; ++o) g[o] = g_in[o], c[o] = c_in[o];
  for (int64_t i = 0; i < len; ++i) {
    acc_t gv[NO > 0 ? NO : 1];
    for (int o = 0; o < NO; ++o) gv[o] = static_cast<acc_t>(g[o][i]);
    out[i] = static_cast<scalar_t>(combine_n<NO>(acc_t(0), gv, c));
  }
}

template <typename scalar_t>
struct Operands {
  const scalar_t* y;
  const scalar_t* bias;
  const scalar_t* base[kMaxOutputs];
  const scalar_t* term[kMaxTerms];
  scalar_t* out[kMaxOutputs];
  scalar_t* k;  // null unless k is returned
  bool* mask;   // null unless the mask is returned
};

template <typename scalar_t, typename acc_t>
void epilogue_chunk(const Epilogue<acc_t>& e, const Operands<scalar_t>& p, ChannelIndex ci,
                    int64_t begin, int64_t len) {
  alignas(64) acc_t k[kChunk];
  with_act(e.act, [&](auto A) {
    tail_run<scalar_t, acc_t, decltype(A)::value>(k, p.y + begin, p.bias, ci, e.scale, begin, len);
  });
  for (int o = 0; o < e.n_out; ++o) {
    const scalar_t* terms[kMaxTerms];
    acc_t c[kMaxTerms];
    int nt = 0;
    for (int j = 0; j < e.n_terms; ++j) {
      if (e.c[o][j] == acc_t(0)) continue;
      terms[nt] = p.term[j] + begin;
      c[nt++] = e.c[o][j];
    }
    const acc_t ck = e.c[o][kK];
    with_count<0, kMaxTerms>(nt, [&](auto NT) {
      constexpr int n = decltype(NT)::value;
      if (ck != acc_t(0)) {
        out_run<scalar_t, acc_t, n, true>(p.out[o] + begin, p.base[o] + begin, terms, c, ck, k, len);
      } else {
        out_run<scalar_t, acc_t, n, false>(p.out[o] + begin, p.base[o] + begin, terms, c, ck, k, len);
      }
    });
  }
  if (p.k) {
    for (int64_t i = 0; i < len; ++i) p.k[begin + i] = static_cast<scalar_t>(k[i]);
  }
  if (p.mask) mask_run<scalar_t, acc_t>(p.mask + begin, p.y + begin, p.bias, ci, begin, len);
}

std::vector<at::Tensor> rk_epilogue_cpu(const at::Tensor& y_in, const std::optional<at::Tensor>& bias_in,
                                        int64_t act, double scale, at::TensorList bases_in,
                                        at::TensorList terms_in, double h, at::ArrayRef<double> coeffs,
                                        bool return_k, bool return_mask) {
  auto a = epilogue_operands(y_in, bias_in, act, bases_in, terms_in, return_k, return_mask, at::kCPU);
  const at::Tensor &y = a.y, &bias = a.bias;
  const auto &bases = a.bases, &terms = a.terms, &outs = a.outs;
  const int n_out = static_cast<int>(bases.size()), n_terms = static_cast<int>(terms.size());
  const ChannelIndex ci = a.ci;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rk_epilogue_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto e = make_epilogue<acc_t>(static_cast<int>(act), scale, n_out, n_terms, h, coeffs);
    Operands<scalar_t> p{};
    p.y = y.data_ptr<scalar_t>();
    p.bias = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    for (int o = 0; o < n_out; ++o) p.base[o] = bases[o].data_ptr<scalar_t>(), p.out[o] = outs[o].data_ptr<scalar_t>();
    for (int j = 0; j < n_terms; ++j) p.term[j] = terms[j].data_ptr<scalar_t>();
    p.k = return_k ? outs[n_out].data_ptr<scalar_t>() : nullptr;
    p.mask = a.mask.defined() ? a.mask.data_ptr<bool>() : nullptr;
    const int64_t numel = y.numel();
    at::parallel_for(0, (numel + kChunk - 1) / kChunk, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c)
        epilogue_chunk<scalar_t, acc_t>(e, p, ci, c * kChunk, std::min(kChunk, numel - c * kChunk));
    });
  });
  return std::move(a.outs);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> rk_epilogue_backward_cpu(
    at::TensorList grads_in, const std::optional<at::Tensor>& grad_k_in, const at::Tensor& y_in,
    const std::optional<at::Tensor>& bias_in, int64_t act, double scale, int64_t n_terms, double h,
    at::ArrayRef<double> coeffs) {
  auto a = epilogue_grad_operands(grads_in, grad_k_in, y_in, bias_in, act, n_terms, at::kCPU);
  const at::Tensor &y = a.y, &mask = a.mask, &bias = a.bias, &gk_t = a.grad_k, &grad_y = a.grad_y;
  const auto &grads = a.grads, &grad_terms = a.grad_terms;
  const bool has_gk = gk_t.defined();
  const int n_out = static_cast<int>(grads.size());
  const ChannelIndex ci = a.ci;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_y.scalar_type(), "rk_epilogue_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto e = make_epilogue<acc_t>(static_cast<int>(act), scale, n_out, static_cast<int>(n_terms), h, coeffs);
    const scalar_t* yp = y.defined() ? y.data_ptr<scalar_t>() : nullptr;
    const uint8_t* mp = mask.defined() ? reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()) : nullptr;
    const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gkp = has_gk ? gk_t.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp[kMaxOutputs] = {};
    scalar_t* gtp[kMaxTerms] = {};
    for (int o = 0; o < n_out; ++o) gp[o] = grads[o].data_ptr<scalar_t>();
    for (int64_t j = 0; j < n_terms; ++j) gtp[j] = grad_terms[j].data_ptr<scalar_t>();
    scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    const int64_t numel = grad_y.numel();
    at::parallel_for(0, (numel + kChunk - 1) / kChunk, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t ch = cb; ch < ce; ++ch) {
        const int64_t begin = ch * kChunk, len = std::min(kChunk, numel - begin);
        // gradient of y: the outputs that use k, with nonzero coefficients
        const scalar_t* g[kMaxOutputs];
        acc_t c[kMaxOutputs];
        int no = 0;
        for (int o = 0; o < n_out; ++o) {
          if (e.c[o][kK] == acc_t(0)) continue;
          g[no] = gp[o] + begin;
          c[no++] = e.c[o][kK];
        }
        alignas(64) acc_t buf[kChunk];
        with_count<0, kMaxOutputs>(no, [&](auto NO) {
          grad_k_run<scalar_t, acc_t, decltype(NO)::value>(buf, g, c, gkp ? gkp + begin : nullptr, len);
        });
        if (mp) {
          grad_mask_run<scalar_t, acc_t>(gyp + begin, buf, mp + begin, e.scale, len);
        } else {
          with_act(e.act, [&](auto A) {
            grad_tail_run<scalar_t, acc_t, decltype(A)::value>(gyp + begin, buf, yp + begin, bp, ci, e.scale, begin, len);
          });
        }
        for (int64_t j = 0; j < n_terms; ++j) {
          int nj = 0;
          for (int o = 0; o < n_out; ++o) {
            if (e.c[o][j] == acc_t(0)) continue;
            g[nj] = gp[o] + begin;
            c[nj++] = e.c[o][j];
          }
          with_count<0, kMaxOutputs>(nj, [&](auto NO) {
            grad_term_run<scalar_t, acc_t, decltype(NO)::value>(gtp[j] + begin, g, c, len);
          });
        }
      }
    });
  });
  return a.results();
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, CPU, m) {
  m.impl("rk_epilogue", &rk_epilogue_cpu);
  m.impl("rk_epilogue_backward", &rk_epilogue_backward_cpu);
}

}  // namespace contnet
