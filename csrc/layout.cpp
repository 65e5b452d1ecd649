// Definitions of the layout helpers declared in contnet/layout.h.
#include "contnet/layout.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>

#include "contnet/activations.h"
#include "contnet/checks.h"
#include "contnet/rk_combine.h"

namespace contnet {

at::MemoryFormat dense_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

at::Tensor in_format(const at::Tensor& t, at::MemoryFormat f) {
  if (!t.defined()) return t;
  if (t.dim() != 4 && f == at::MemoryFormat::ChannelsLast) return t.contiguous();
  return t.contiguous(f);
}

ChannelIndex channel_index(const at::Tensor& t, at::MemoryFormat f) {
  const int64_t c = t.dim() >= 2 ? t.size(1) : 1;
  if (f == at::MemoryFormat::ChannelsLast) return {1, c};
  int64_t inner = 1;
  for (int64_t d = 2; d < t.dim(); ++d) inner *= t.size(d);
  return {inner, c};
}

at::Tensor channel_sum(const at::Tensor& t) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (d != 1) dims.push_back(d);
  return at::sum(t, dims);
}

namespace {

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

}  // namespace

EpilogueOperands epilogue_operands(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                                   int64_t act, at::TensorList bases, at::TensorList terms,
                                   bool return_k, bool return_mask, c10::DeviceType device) {
  check_epilogue(y, bias, bases, terms);
  TORCH_CHECK_VALUE(!return_mask || act == kRelu, "return_mask needs act relu (", int(kRelu),
                    "), got act ", act);
  check_device(y, "y", device);
  const auto fmt = dense_format(y);
  EpilogueOperands a;
  a.y = in_format(y, fmt);
  a.bias = contiguous_or_undefined(bias);
  for (const auto& t : bases) a.bases.push_back(in_format(t, fmt));
  for (const auto& t : terms) a.terms.push_back(in_format(t, fmt));
  const size_t n_outs = bases.size() + (return_k ? 1 : 0);
  for (size_t o = 0; o < n_outs; ++o) a.outs.push_back(at::empty_like(a.y));
  if (return_mask) {
    a.mask = at::empty_like(a.y, a.y.options().dtype(at::kBool));
    a.outs.push_back(a.mask);
  }
  a.ci = channel_index(a.y, fmt);
  return a;
}

EpilogueGradOperands epilogue_grad_operands(at::TensorList grads,
                                            const std::optional<at::Tensor>& grad_k,
                                            const at::Tensor& y,
                                            const std::optional<at::Tensor>& bias, int64_t act,
                                            int64_t n_terms, c10::DeviceType device) {
  const bool has_gk = grad_k.has_value() && grad_k->defined();
  const bool masked = y.scalar_type() == at::kBool;
  const at::Tensor like = check_epilogue_grad(grads, grad_k, y, bias, act, n_terms).first;
  check_device(y, "y", device);
  const auto fmt = dense_format(y);
  EpilogueGradOperands a;
  a.dtype = like.scalar_type();
  // the bias's gradient sums y's gradients unrounded, as autograd of the forward's float
  // arithmetic does: float16/bfloat16 operands are widened for the kernel
  const bool widen = bias.has_value() && bias->defined() && at::isReducedFloatingType(a.dtype);
  const auto wide = [&](const at::Tensor& t) {
    return in_format(widen && t.defined() && t.scalar_type() != at::kBool ? t.to(at::kFloat) : t, fmt);
  };
  if (has_gk) a.grad_k = wide(*grad_k);
  (masked ? a.mask : a.y) = wide(y);
  a.bias = contiguous_or_undefined(bias);
  if (widen) a.bias = a.bias.to(at::kFloat);
  for (const auto& t : grads) a.grads.push_back(wide(t));
  const auto grad_options = y.options().dtype(widen ? at::kFloat : a.dtype);
  for (int64_t j = 0; j < n_terms; ++j) a.grad_terms.push_back(at::empty_like(y, grad_options, fmt));
  a.grad_y = at::empty_like(y, grad_options, fmt);
  a.ci = channel_index(y, fmt);
  return a;
}

CombineOperands combine_operands(const at::Tensor& x, at::TensorList terms, double h,
                                 at::ArrayRef<double> coeffs) {
  const bool in_double = x.scalar_type() == at::kDouble;
  CombineOperands a;
  for (size_t j = 0; j < terms.size(); ++j) {
    const double hc = h * coeffs[j];
    if (coefficient_vanishes(hc, in_double)) continue;
    a.terms.push_back(terms[j]);
    a.coeffs.push_back(coeffs[j]);
  }
  a.widened = a.terms.size() > static_cast<size_t>(kMaxTerms) && at::isReducedFloatingType(x.scalar_type());
  a.x = a.widened ? x.to(at::kFloat) : x;
  if (a.widened)
    for (auto& t : a.terms) t = t.to(at::kFloat);
  return a;
}

ErrorOperands error_operands(const at::Tensor& x, const std::optional<at::Tensor>& x_next,
                             at::TensorList terms, const c10::ArrayRef<double>* b,
                             c10::ArrayRef<double> e, double rtol, double atol,
                             c10::DeviceType device) {
  check_error(x, x_next ? &*x_next : nullptr, terms, b, e, rtol, atol);
  check_device(x, "x", device);
  ErrorOperands a;
  const auto fmt = dense_format(x);
  a.x = in_format(x, fmt);
  a.computed = !x_next.has_value();
  a.x_next = a.computed ? at::empty_like(a.x) : in_format(*x_next, fmt);
  for (const auto& t : terms) a.terms.push_back(in_format(t, fmt));
  a.samples = x.size(0);
  a.m = a.samples > 0 ? x.numel() / a.samples : 0;
  a.sq = at::empty({a.samples}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  return a;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> EpilogueGradOperands::results() const {
  at::Tensor grad_bias =
      bias.defined() ? channel_sum(grad_y).to(dtype) : at::empty({0}, grad_y.options().dtype(dtype));
  std::vector<at::Tensor> terms;
  for (const auto& t : grad_terms) terms.push_back(t.scalar_type() == dtype ? t : t.to(dtype));
  return {grad_y.scalar_type() == dtype ? grad_y : grad_y.to(dtype), std::move(terms), std::move(grad_bias)};
}

}  // namespace contnet
