// Autograd of the fused epilogue, in C++: the forward keeps what its backward reads (relu's
// mask, or nothing for identity), the backward is the contnet op rk_epilogue_backward, and
// a second derivative through it is a clear error.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "contnet/dispatch.h"
#include "contnet/activations.h"
#include "contnet/layout.h"
#include "contnet/rk_combine.h"

namespace contnet {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What the backward keeps of y: relu its bool mask (a quarter of y's bytes at float32, and
// y itself can be freed), identity nothing (its derivative does not read y), the others y.
struct RkEpilogue : public torch::autograd::Function<RkEpilogue> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y, const std::optional<at::Tensor>& bias,
                               int64_t act, double scale, at::TensorList bases, at::TensorList terms, double h,
                               at::ArrayRef<double> coeffs, bool return_k, bool return_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->set_materialize_grads(false);  // unused outputs cost nothing in backward
    // the arguments backward needs, in two entries (each entry of saved_data is a keyed
    // insertion paid on every call): {act, n_bases, n_terms, has_bias, return_k} and
    // {scale, h, coeffs...}
    const bool has_bias = bias.has_value() && bias->defined();
    const bool masked = act == kRelu;
    // and for identity, whether y was channels_last: the layout its gradient keeps
    const bool channels_last = act == kIdentity && dense_format(y) == at::MemoryFormat::ChannelsLast;
    ctx->saved_data["ints"] = std::vector<int64_t>{act, static_cast<int64_t>(bases.size()),
                                                   static_cast<int64_t>(terms.size()), has_bias, return_k,
                                                   channels_last};
    std::vector<double> reals{scale, h};
    reals.insert(reals.end(), coeffs.begin(), coeffs.end());
    ctx->saved_data["reals"] = std::move(reals);
    auto outs = rk_epilogue_op(y, bias, act, scale, bases, terms, h, coeffs, return_k, masked || return_mask);
    const at::Tensor kept = masked ? outs.back() : act == kIdentity ? at::Tensor() : y;
    ctx->save_for_backward({kept, has_bias ? *bias : at::Tensor()});
    if (return_mask) {
      ctx->mark_non_differentiable({outs.back()});
    } else if (masked) {
      outs.pop_back();
    }
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto ints = ctx->saved_data["ints"].toIntVector();
    const auto reals = ctx->saved_data["reals"].toDoubleVector();
    const int64_t act = ints[0], n_bases = ints[1], n_terms = ints[2];
    const bool has_bias = ints[3] != 0, return_k = ints[4] != 0;
    const double scale = reals[0], h = reals[1];
    const double* coeffs = reals.data() + 2;
    at::Tensor grad_k = return_k ? grads[n_bases] : at::Tensor();
    // the defined output gradients and their coefficient rows
    std::vector<at::Tensor> gs;
    std::vector<double> rows;
    for (int64_t o = 0; o < n_bases; ++o) {
      if (!grads[o].defined()) continue;
      gs.push_back(grads[o]);
      rows.insert(rows.end(), coeffs + o * (n_terms + 1), coeffs + (o + 1) * (n_terms + 1));
    }
    // one gradient per forward argument: y, bias (undefined when absent), act, scale,
    // bases, terms, h, coeffs, return_k, return_mask
    variable_list out;
    if (gs.empty() && !grad_k.defined()) {
      out.resize(4 + n_bases + n_terms + 4);
      return out;
    }
    // identity kept nothing of y: an output gradient (its shape and dtype) in y's layout
    // stands in for it, taken in place of that gradient so it is made dense once
    at::Tensor y = saved[0];
    if (!y.defined()) {
      at::Tensor& stand_in = gs.empty() ? grad_k : gs[0];
      stand_in = in_format(stand_in, ints[5] != 0 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
      y = stand_in;
    }
    const std::optional<at::Tensor> bias = has_bias ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const std::optional<at::Tensor> gk = grad_k.defined() ? std::optional<at::Tensor>(grad_k) : std::nullopt;
    // whether a gradient reaches k: its own, or an output that read it (a coefficient of k
    // that does not vanish). If none does, y and bias are not on a path to the loss and
    // get no gradient, as autograd of the same ops would give (not 0 * act'(z), NaN where
    // act' is).
    bool k_read = grad_k.defined();
    const bool in_double = (gs.empty() ? grad_k : gs[0]).scalar_type() == at::kDouble;
    for (size_t o = 0; o < gs.size() && !k_read; ++o)
      k_read = !coefficient_vanishes(h * rows[o * (n_terms + 1) + n_terms], in_double);
    // through the autograd key (rk_epilogue_backward_autograd): the kernel itself when no
    // graph is built, else a node that makes a double backward a clear error
    auto [grad_y, grad_terms, grad_bias] = rk_epilogue_backward_op(gs, gk, y, bias, act, scale, n_terms, h, rows);
    out.push_back(k_read ? grad_y : at::Tensor());
    out.push_back(has_bias && k_read ? grad_bias : at::Tensor());
    out.emplace_back();  // act
    out.emplace_back();  // scale
    for (int64_t o = 0; o < n_bases; ++o) out.push_back(grads[o]);
    out.insert(out.end(), grad_terms.begin(), grad_terms.end());
    out.emplace_back();  // h
    out.emplace_back();  // coeffs
    out.emplace_back();  // return_k
    out.emplace_back();  // return_mask
    return out;
  }
};

std::vector<at::Tensor> rk_epilogue_autograd(const at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t act,
                                             double scale, at::TensorList bases, at::TensorList terms, double h,
                                             at::ArrayRef<double> coeffs, bool return_k, bool return_mask) {
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  if (!needs_autograd({&y, &b}, {bases, terms})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_epilogue_op(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask);
  }
  return RkEpilogue::apply(y, bias, act, scale, bases, terms, h, coeffs, return_k, return_mask);
}

// The epilogue's backward differentiates no further. Under create_graph its outputs get a
// node that, if differentiated, raises an error that says what to do instead.
struct RkEpilogueBackwardOnce : public torch::autograd::Function<RkEpilogueBackwardOnce> {
  static variable_list forward(AutogradContext* ctx, at::TensorList grads, const std::optional<at::Tensor>& grad_k,
                               const at::Tensor& y, const std::optional<at::Tensor>& bias, int64_t act, double scale,
                               int64_t n_terms, double h, at::ArrayRef<double> coeffs) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_y, grad_terms, grad_bias] = rk_epilogue_backward_op(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
    variable_list out{grad_y, grad_bias};  // grad_bias undefined without a bias
    out.insert(out.end(), grad_terms.begin(), grad_terms.end());
    return out;
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "the fused epilogue's backward (contnet::rk_epilogue_backward) has no derivative: for a "
                "second derivative (a gradient penalty, a Hessian-vector product) run the model under "
                "contnet.ops.use_reference() (the same results in pure PyTorch)");
    return {};
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> rk_epilogue_backward_autograd(
    at::TensorList grads, const std::optional<at::Tensor>& grad_k, const at::Tensor& y,
    const std::optional<at::Tensor>& bias, int64_t act, double scale, int64_t n_terms, double h,
    at::ArrayRef<double> coeffs) {
  const at::Tensor gk = grad_k.has_value() ? *grad_k : at::Tensor();
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  if (!needs_autograd({&gk, &y, &b}, {grads})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rk_epilogue_backward_op(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
  }
  auto outs = RkEpilogueBackwardOnce::apply(grads, grad_k, y, bias, act, scale, n_terms, h, coeffs);
  std::vector<at::Tensor> grad_terms(outs.begin() + 2, outs.end());
  return {outs[0], grad_terms, outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(contnet, Autograd, m) {
  m.impl("rk_epilogue", &rk_epilogue_autograd);
  // no double backward through the epilogue: a clear error if one is asked for
  m.impl("rk_epilogue_backward", &rk_epilogue_backward_autograd);
}

}  // namespace contnet
